// Reading a Config: YAML file -> typed fields, then --set overrides, then validate().
//
// Note [Config error messages]
// Every error is a switchyard::Error whose message reads
//     <where>: <full key>: <what is wrong>
// where <where> is "file:line" (1-based) for a file and "--set key=value" for an override.
// They are thrown directly rather than through SWITCHYARD_CHECK, which would append our
// own source location: these messages are for the person who wrote the YAML.
//
// Parsing is strict on purpose: a YAML scalar is untyped text, and we accept only what
// unambiguously reads as the field's type (no quoted numbers, no 2.0 for an int, only
// true/false for a bool), since a silently misread value costs a training run.
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include <yaml-cpp/yaml.h>

#include "switchyard/common/error.h"
#include "switchyard/config/config.h"
#include "switchyard/config/config_registry.h"

namespace switchyard::config {
namespace {

[[noreturn]] void fail(const Origin& at, std::string_view key, const std::string& what) {
  std::string msg = at.describe();
  if (!key.empty()) msg += ": " + std::string(key);
  throw Error(msg + ": " + what);
}

Origin file_origin(const std::string& file, const YAML::Mark& mark) {
  Origin o;
  o.file = file;
  o.line = mark.line >= 0 ? mark.line + 1 : 0;
  return o;
}

// A scalar written in quotes (or tagged !!str) is a string, whatever it looks like.
bool is_quoted(const YAML::Node& n) {
  return n.Tag() == "!" || n.Tag() == "tag:yaml.org,2002:str";
}

std::string describe_node(const YAML::Node& n) {
  switch (n.Type()) {
    case YAML::NodeType::Null: return "nothing (null)";
    case YAML::NodeType::Sequence: return "a list";
    case YAML::NodeType::Map: return "a mapping";
    case YAML::NodeType::Scalar: return quote(n.Scalar());
    case YAML::NodeType::Undefined: break;
  }
  return "an undefined value";
}

enum class Parsed { Ok, Invalid, OutOfRange };

// Parses the whole of s as an int64_t or a double (std::from_chars: locale-free, exact).
// A leading '+' is accepted, as YAML allows; "+-1" is not.
template <typename Number>
Parsed parse_number(std::string_view s, Number& out) {
  if (!s.empty() && s[0] == '+') {
    s.remove_prefix(1);
    if (!s.empty() && s[0] == '-') return Parsed::Invalid;
  }
  if (s.empty()) return Parsed::Invalid;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), out);
  if (end != s.data() + s.size()) return Parsed::Invalid;
  if (ec == std::errc::result_out_of_range) return Parsed::OutOfRange;
  return ec == std::errc() ? Parsed::Ok : Parsed::Invalid;
}

const std::string& scalar_or_fail(const YAML::Node& v, const Origin& at, std::string_view key,
                                  const char* expected) {
  if (!v.IsScalar()) fail(at, key, std::string("expected ") + expected + ", got " + describe_node(v));
  return v.Scalar();
}

// Stores YAML value `v` into `field` of `cfg`, or throws naming `at` and the key.
void assign(Config& cfg, const FieldInfo& field, const YAML::Node& v, const Origin& at) {
  const std::string& key = field.full_key;
  FieldRef ref = field.ref(cfg);

  if (auto* p = std::get_if<int64_t*>(&ref)) {
    const std::string& text = scalar_or_fail(v, at, key, "an integer");
    if (is_quoted(v)) fail(at, key, "expected an integer, got the string " + quote(text));
    int64_t x = 0;
    switch (parse_number(text, x)) {
      case Parsed::Ok: **p = x; return;
      case Parsed::OutOfRange: fail(at, key, "integer " + text + " is out of range (64-bit)");
      case Parsed::Invalid: break;
    }
    double d = 0;
    if (parse_number(text, d) != Parsed::Invalid) {
      fail(at, key, "expected an integer, got the floating-point number " + text);
    }
    fail(at, key, "expected an integer, got " + quote(text));
  }

  if (auto* p = std::get_if<double*>(&ref)) {
    const std::string& text = scalar_or_fail(v, at, key, "a number");
    if (is_quoted(v)) fail(at, key, "expected a number, got the string " + quote(text));
    double x = 0;
    switch (parse_number(text, x)) {
      case Parsed::Ok:
        if (!std::isfinite(x)) fail(at, key, "expected a finite number, got " + text);
        **p = x;
        return;
      case Parsed::OutOfRange: fail(at, key, "number " + text + " is out of range (double)");
      case Parsed::Invalid: fail(at, key, "expected a number, got " + quote(text));
    }
  }

  if (auto* p = std::get_if<bool*>(&ref)) {
    const std::string& text = scalar_or_fail(v, at, key, "true or false");
    if (!is_quoted(v)) {
      if (text == "true" || text == "True" || text == "TRUE") { **p = true; return; }
      if (text == "false" || text == "False" || text == "FALSE") { **p = false; return; }
    }
    fail(at, key, "expected true or false, got " + quote(text));
  }

  if (auto* p = std::get_if<std::string*>(&ref)) {
    if (v.IsNull()) {  // `path:` with nothing after it reads as the empty string
      (*p)->clear();
      return;
    }
    const std::string& text = scalar_or_fail(v, at, key, "a string");
    **p = text;
    if (!is_quoted(v)) {
      for (const auto& [from, to] : field.aliases) {
        if (text == from) **p = to;
      }
    }
    return;
  }

  auto* list = std::get<std::vector<std::string>*>(ref);
  if (v.IsNull()) {
    list->clear();
    return;
  }
  if (!v.IsSequence()) {
    fail(at, key, "expected a list of strings such as [a, b], got " + describe_node(v));
  }
  std::vector<std::string> items;
  for (size_t i = 0; i < v.size(); ++i) {
    const YAML::Node item = v[i];
    if (!item.IsScalar()) {
      Origin item_at = at;
      if (!at.file.empty() && item.Mark().line >= 0) item_at.line = item.Mark().line + 1;
      fail(item_at, key + "[" + std::to_string(i) + "]",
           "expected a string, got " + describe_node(item));
    }
    items.push_back(item.Scalar());
  }
  *list = std::move(items);
}

std::vector<std::string> section_names() {
  std::vector<std::string> names;
  for (const auto& s : registry()) names.push_back(s.name);
  return names;
}

// Sections that have a key spelled exactly `key`, as "moe.top_k, ...".
std::string sections_with_key(std::string_view key, const SectionInfo* except) {
  std::string out;
  for (const auto& s : registry()) {
    if (&s == except || !s.find(key)) continue;
    out += (out.empty() ? "" : "' or '") + s.name + "." + std::string(key);
  }
  return out;
}

std::string unknown_section(const std::string& name) {
  std::string msg = "unknown section";
  if (std::string near = closest_match(name, section_names()); !near.empty()) {
    return msg + "; did you mean '" + near + "'?";
  }
  if (std::string other = sections_with_key(name, nullptr); !other.empty()) {
    return msg + "; '" + name + "' is a key: did you mean '" + other + "'?";
  }
  std::string all;
  for (const auto& s : section_names()) all += (all.empty() ? "" : ", ") + s;
  return msg + " (the sections are " + all + ")";
}

std::string unknown_key(const SectionInfo& section, const std::string& key) {
  std::string msg = "unknown key";
  std::vector<std::string> keys;
  for (const auto& f : section.fields) keys.push_back(f.key);
  if (std::string near = closest_match(key, keys); !near.empty()) {
    return msg + "; did you mean '" + near + "'?";
  }
  if (std::string other = sections_with_key(key, &section); !other.empty()) {
    return msg + " in section '" + section.name + "'; did you mean '" + other + "'?";
  }
  return msg + " in section '" + section.name + "' (see docs/configuration.md for its keys)";
}

void apply_document(Config& cfg, const YAML::Node& root, const std::string& file) {
  if (!root.IsDefined() || root.IsNull()) return;  // an empty file: every default
  if (!root.IsMap()) {
    fail(file_origin(file, root.Mark()), "",
         "expected a mapping of sections (model:, moe:, ...), got " + describe_node(root));
  }
  std::map<std::string, int> section_lines;
  for (auto it = root.begin(); it != root.end(); ++it) {
    const Origin at = file_origin(file, it->first.Mark());
    if (!it->first.IsScalar()) {
      fail(at, "", "expected a section name, got " + describe_node(it->first));
    }
    const std::string& name = it->first.Scalar();
    const SectionInfo* section = find_section(name);
    if (!section) fail(at, name, unknown_section(name));
    if (auto [prev, fresh] = section_lines.emplace(name, at.line); !fresh) {
      fail(at, name, "section appears twice (first at line " + std::to_string(prev->second) + ")");
    }
    const YAML::Node& body = it->second;
    if (body.IsNull()) continue;  // `moe:` alone keeps the defaults
    if (!body.IsMap()) fail(at, name, "expected a mapping of keys, got " + describe_node(body));

    std::map<std::string, int> key_lines;
    for (auto kv = body.begin(); kv != body.end(); ++kv) {
      const Origin key_at = file_origin(file, kv->first.Mark());
      if (!kv->first.IsScalar()) {
        fail(key_at, name, "expected a key, got " + describe_node(kv->first));
      }
      const std::string& key = kv->first.Scalar();
      const FieldInfo* field = section->find(key);
      if (!field) fail(key_at, name + "." + key, unknown_key(*section, key));
      if (auto [prev, fresh] = key_lines.emplace(key, key_at.line); !fresh) {
        fail(key_at, field->full_key,
             "key appears twice (first at line " + std::to_string(prev->second) + ")");
      }
      // A null value's Mark points past it (the next line), so errors cite the key's line.
      assign(cfg, *field, kv->second, key_at);
      cfg.origins[field->full_key] = key_at;
    }
  }
}

void apply_override(Config& cfg, const std::string& text) {
  Origin at;
  at.cli_override = "--set " + text;
  const auto eq = text.find('=');
  std::string key = text.substr(0, eq);
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.back()))) key.pop_back();
  while (!key.empty() && std::isspace(static_cast<unsigned char>(key.front()))) key.erase(0, 1);
  if (eq == std::string::npos) fail(at, "", "expected SECTION.KEY=VALUE");

  const auto dot = key.find('.');
  if (dot == std::string::npos) {
    std::string other = sections_with_key(key, nullptr);
    fail(at, key, "expected SECTION.KEY=VALUE" +
                      (other.empty() ? std::string() : "; did you mean '" + other + "'?"));
  }
  const std::string section_name = key.substr(0, dot);
  const SectionInfo* section = find_section(section_name);
  if (!section) fail(at, section_name, unknown_section(section_name));
  const std::string name = key.substr(dot + 1);
  const FieldInfo* field = section->find(name);
  if (!field) fail(at, key, unknown_key(*section, name));

  YAML::Node value;
  try {
    value = YAML::Load(text.substr(eq + 1));
  } catch (const YAML::Exception& e) {
    fail(at, key, "cannot read the value as YAML: " + e.msg);
  }
  assign(cfg, *field, value, at);
  cfg.origins[field->full_key] = at;
}

}  // namespace

void apply_overrides(Config& config, const std::vector<std::string>& overrides) {
  for (const auto& o : overrides) apply_override(config, o);
  validate(config);
}

Config load_config_string(const std::string& yaml_text, const std::string& source_name,
                          const std::vector<std::string>& overrides) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(yaml_text);
  } catch (const YAML::Exception& e) {
    fail(file_origin(source_name, e.mark), "", "invalid YAML: " + e.msg);
  }
  if (docs.size() > 1) {
    fail(file_origin(source_name, docs[1].Mark()), "",
         "expected one YAML document, found " + std::to_string(docs.size()) + " (remove '---')");
  }
  Config cfg;
  if (!docs.empty()) apply_document(cfg, docs[0], source_name);
  for (const auto& o : overrides) apply_override(cfg, o);
  validate(cfg);
  return cfg;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (!fs::exists(st)) throw Error("config file '" + path + "' does not exist");
  if (fs::is_directory(st)) throw Error("config file '" + path + "' is a directory, not a file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error("cannot read config file '" + path + "': " + std::strerror(errno));
  std::ostringstream text;
  text << in.rdbuf();
  return load_config_string(text.str(), path, overrides);
}

}  // namespace switchyard::config
