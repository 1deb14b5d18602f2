// placeholder: sampling is being written
