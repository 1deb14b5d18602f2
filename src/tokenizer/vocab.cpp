// placeholder: the tokenizer module is being written
