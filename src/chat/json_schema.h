// chat/json_schema.h - JSON Schema -> GBNF (grammar.h), for response_format and tool-call arguments.
//
// What is supported:
//   * true / {} : any JSON value; `type` (object, array, string, number, integer, boolean, null, or a list of them;
//     without `type` it is guessed from the keywords present, else any value); `nullable: true` (OpenAPI) adds null;
//   * objects: `properties` in the schema's key order, `required` (the others may be left out, the order stays),
//     names in `required` but not in `properties` (any value, after the listed ones), `additionalProperties`
//     (false, true or a schema; extra keys come after the listed ones and differ from them). When it is ABSENT,
//     an object with `properties` takes no extra keys (llama.cpp's choice; a model never benefits from inventing
//     keys) and an object without `properties` takes any keys;
//   * arrays: `items`, `prefixItems` (draft 4-2019 `items: [...]` + `additionalItems` too; after the prefix, more
//     items only when `items` / `additionalItems` gives a schema), `minItems`, `maxItems`;
//   * strings: valid JSON strings (escapes), `minLength` / `maxLength` (in characters; an escape counts as one),
//     `pattern` (a regular-expression subset: literals, ., [classes], \d \w \s and their negations, groups, (?:),
//     |, * + ? {m} {m,} {m,n} (lazy ones too: the same strings match); without ^ / $ anything may come before /
//     after, as JSON Schema says; not: backreferences, lookaround, \b, possessive quantifiers, POSIX classes),
//     `format` date, time, date-time, uuid (other formats, and any format beside minLength/maxLength: any string);
//   * `enum`, `const` (the value's compact JSON text); `anyOf`, `oneOf` (treated as anyOf); `allOf` (merged:
//     properties and required are united, other keywords must agree); `$ref` to "#", "#/$defs/..",
//     "#/definitions/.." or any JSON pointer into the same document (recursion works);
//   * integers: `minimum`, `maximum`, `exclusiveMinimum`, `exclusiveMaximum` (draft 4 boolean form too);
//     numbers: the same, when the bounds are whole numbers (then no exponent is produced).
// Every integer has at most 16 digits, a fraction at most 16, an exponent at most 2 (so every number fits a
// double); whitespace between tokens is nothing, one space, or one newline followed by up to 20 spaces/tabs, so a
// model cannot loop on whitespace or digits forever. No whitespace before or after the top value. maxLength /
// maxItems above 100000 count as unbounded (minLength / minItems above it are an error).
// Not supported (lokal::Error "JSON schema: unsupported keyword 'not' at /properties/x"): not, if/then/else,
// dependentSchemas, dependentRequired, dependencies, patternProperties, propertyNames, contains, minContains,
// maxContains, uniqueItems (true), multipleOf, minProperties, maxProperties, unevaluatedProperties,
// unevaluatedItems, $dynamicRef, $recursiveRef, remote $refs, `false` schemas, validation keywords beside a $ref,
// `pattern` together with minLength/maxLength, both anyOf and oneOf in one schema, non-integer bounds on numbers.
// Unknown keywords are ignored (annotations: title, description, default, examples, ...).
#pragma once
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

namespace lokal {

// A whole grammar whose root matches one JSON value of `schema`. Throws lokal::Error (see above).
std::string json_schema_to_gbnf(const nlohmann::ordered_json& schema);
// root = any JSON value / any JSON object (response_format {"type": "json_object"}).
std::string json_any_value_gbnf();
std::string json_object_gbnf();

// Builds one grammar from several schemas and hand-written rules, e.g. a tool-call grammar:
//   SchemaConverter c;
//   std::string args = c.add(tool["parameters"], "get-weather-args");
//   std::string call = c.add_rule("get-weather-call",
//       SchemaConverter::literal("<tool_call>\n{\"name\": \"get_weather\", \"arguments\": ") + " " + args + " " +
//       SchemaConverter::literal("}\n</tool_call>"));
//   std::string gbnf = c.grammar(call);   // or c.grammar(call1 + " | " + call2)
// Rule names are made from the hints ([A-Za-z0-9-], made unique); identical bodies share one rule.
class SchemaConverter {
 public:
  SchemaConverter();
  // Compiles `schema` ($refs resolve inside it) and returns the name of the rule matching one value of it.
  std::string add(const nlohmann::ordered_json& schema, const std::string& name_hint);
  // Adds `name ::= body` and returns the name used (`name` sanitized, with a suffix if taken by another body).
  std::string add_rule(const std::string& name, const std::string& body);
  // The GBNF text: "root ::= root_body" and every rule added.
  std::string grammar(const std::string& root_body) const;
  // Rules for the common pieces, added on first use: "ws" (the bounded whitespace), "value" (any JSON value),
  // "object", "array", "string", "number", "integer", "boolean", "null".
  std::string builtin(const std::string& name);

  // GBNF helpers: a string literal matching `text` exactly (UTF-8), and a class of code points.
  static std::string literal(std::string_view text);

 private:
  struct Ctx;
  std::string visit(const nlohmann::ordered_json& s, const std::string& name, const std::string& path, Ctx& ctx,
                    int depth);
  std::string visit_object(const nlohmann::ordered_json& s, const std::string& name, const std::string& path,
                           Ctx& ctx, int depth);
  std::string visit_array(const nlohmann::ordered_json& s, const std::string& name, const std::string& path, Ctx& ctx,
                          int depth);
  std::string visit_string(const nlohmann::ordered_json& s, const std::string& name, const std::string& path);
  std::string visit_number(const nlohmann::ordered_json& s, bool integer, const std::string& name,
                           const std::string& path);
  std::string not_keys_rule(const std::vector<std::string>& keys, const std::string& name);
  std::string unique_name(const std::string& hint);

  std::vector<std::pair<std::string, std::string>> rules_;  // in order of addition
  std::map<std::string, std::string> by_name_;               // name -> body
  std::map<std::string, std::string> by_body_;               // body -> name
  std::set<std::string> reserved_;
  int n_docs_ = 0;
};

}  // namespace lokal
