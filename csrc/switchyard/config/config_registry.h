// The field registry: every configuration key described once (see Note [One source of
// truth] in config.h). Parsing, validation, the YAML dump, the Python view and the docs
// generator all iterate over registry() instead of naming fields by hand.
#pragma once

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "switchyard/config/config.h"

namespace switchyard::config {

enum class FieldType { Int, Float, Bool, String, StringList, Enum };

// "int", "float", "bool", "string", "list of strings", "enum".
const char* type_name(FieldType type);

// A typed pointer to one field inside a Config.
using FieldRef = std::variant<int64_t*, double*, bool*, std::string*, std::vector<std::string>*>;
using ConstFieldRef = std::variant<const int64_t*, const double*, const bool*, const std::string*,
                                   const std::vector<std::string>*>;

struct Bound {
  double value = 0;
  bool exclusive = false;
};

// Checks one string (a string field, or each item of a list field); returns "" when the
// value is fine, else the reason it is not.
using ItemCheck = std::string (*)(const std::string& item);

struct FieldInfo {
  std::string section;   // "moe"
  std::string key;       // "top_k"
  std::string full_key;  // "moe.top_k"
  FieldType type = FieldType::Int;
  std::string doc;
  std::optional<Bound> min, max;            // Int and Float fields
  std::vector<std::string> choices;         // Enum fields
  // Unquoted YAML scalars that stand for another string value (checkpoint.resume:
  // false -> "", true -> "latest"), so natural spellings mean what they look like.
  std::vector<std::pair<std::string, std::string>> aliases;
  ItemCheck item_check = nullptr;           // String and StringList fields
  std::string item_rule;                    // what item_check accepts, for the docs
  std::function<FieldRef(Config&)> ref;
  std::function<ConstFieldRef(const Config&)> cref;

  // Builder helpers used by the registry table.
  FieldInfo& at_least(double v) { min = Bound{v, false}; return *this; }
  FieldInfo& greater_than(double v) { min = Bound{v, true}; return *this; }
  FieldInfo& at_most(double v) { max = Bound{v, false}; return *this; }
  FieldInfo& less_than(double v) { max = Bound{v, true}; return *this; }
  FieldInfo& one_of(std::vector<std::string> values);
  FieldInfo& alias(std::string from, std::string to);
  FieldInfo& items(ItemCheck check, std::string rule);

  // The range or allowed values in words (">= 1", "`topk`, `expert_choice`"), "" if any.
  std::string allowed_text(bool markdown) const;
};

struct SectionInfo {
  std::string name;
  std::string doc;
  std::vector<FieldInfo> fields;
  const FieldInfo* find(std::string_view key) const;
};

// Every section, in the order they are dumped and documented.
const std::vector<SectionInfo>& registry();
const SectionInfo* find_section(std::string_view name);
const FieldInfo* find_field(std::string_view full_key);  // "moe.top_k"

// A field's value as YAML text: 2, 0.0003, true, "runs/x", ["a:2", "b:2"]. Loads back to
// the same value (doubles use the shortest round-trip form).
std::string format_value(ConstFieldRef value);
std::string format_value(const FieldInfo& field, const Config& config);
// A YAML double-quoted string with escapes.
std::string quote(std::string_view text);
// A number as written in messages and docs: integers without a fraction.
std::string format_number(double value, bool integral);

// A rule that relates several keys, checked after all keys are read. `check` returns ""
// when the config satisfies it, else what is wrong. world_size is 0 when unknown (plain
// validate()); rules that need it then pass.
struct CrossKeyRule {
  std::vector<std::string> keys;  // the first explicitly set one is reported as the cause
  std::string doc;                // one line for the docs
  std::function<std::string(const Config&, int world_size)> check;
};
const std::vector<CrossKeyRule>& cross_key_rules();

// Closest candidate by edit distance, or "" when none is close enough to be a typo.
std::string closest_match(std::string_view word, const std::vector<std::string>& candidates);

}  // namespace switchyard::config
