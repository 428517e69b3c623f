// Writing a Config out: values as YAML text, the full dump, the fingerprint, equality, and
// the markdown reference of every key (docs/configuration.md is generated from it).
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "switchyard/config/config.h"
#include "switchyard/config/config_registry.h"

namespace switchyard::config {
namespace {

// Shortest text that reads back to the same double, laid out as Python's repr() does it:
// positional for exponents -4..15, scientific outside. Always recognisable as a float
// ("1.0", "1.0e-05"), also by YAML 1.1 readers such as PyYAML.
std::string format_double(double v) {
  if (!std::isfinite(v)) return v != v ? ".nan" : (v > 0 ? ".inf" : "-.inf");
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::scientific);
  std::string s(buf, res.ptr);
  const auto e = s.find('e');
  const int exponent = std::atoi(s.c_str() + e + 1);
  if (exponent >= -4 && exponent < 16) {
    res = std::to_chars(buf, buf + sizeof(buf), v, std::chars_format::fixed);
    s.assign(buf, res.ptr);
    if (s.find('.') == std::string::npos) s += ".0";
  } else if (s.find('.') == std::string::npos) {
    s.insert(e, ".0");
  }
  return s;
}

std::string dump_section(const Config& c, const SectionInfo& s) {
  std::string out = s.name + ":\n";
  for (const auto& f : s.fields) out += "  " + f.key + ": " + format_value(f, c) + "\n";
  return out;
}

uint64_t fnv1a64(std::string_view text) {
  uint64_t h = 14695981039346656037ull;
  for (unsigned char ch : text) {
    h ^= ch;
    h *= 1099511628211ull;
  }
  return h;
}

// Markdown table cells cannot hold a bare '|'.
std::string md_cell(std::string_view text) {
  std::string out;
  for (char ch : text) {
    if (ch == '|') out += '\\';
    out += ch;
  }
  return out;
}

}  // namespace

std::string quote(std::string_view text) {
  std::string out = "\"";
  for (unsigned char ch : text) {
    switch (ch) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (ch < 0x20 || ch == 0x7f) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\x%02x", ch);
          out += buf;
        } else {
          out += static_cast<char>(ch);
        }
    }
  }
  return out + "\"";
}

std::string format_number(double value, bool integral) {
  if (integral) return std::to_string(static_cast<long long>(value));
  std::string s = format_double(value);  // without the ".0" that marks a YAML float
  if (s.size() > 2 && s.compare(s.size() - 2, 2, ".0") == 0) s.resize(s.size() - 2);
  return s;
}

std::string format_value(ConstFieldRef value) {
  if (auto* p = std::get_if<const int64_t*>(&value)) return std::to_string(**p);
  if (auto* p = std::get_if<const double*>(&value)) return format_double(**p);
  if (auto* p = std::get_if<const bool*>(&value)) return **p ? "true" : "false";
  if (auto* p = std::get_if<const std::string*>(&value)) return quote(**p);
  std::string out = "[";
  for (const auto& item : *std::get<const std::vector<std::string>*>(value)) {
    out += (out.size() > 1 ? ", " : "") + quote(item);
  }
  return out + "]";
}

std::string format_value(const FieldInfo& field, const Config& config) {
  return format_value(field.cref(config));
}

std::string Origin::describe() const {
  if (!cli_override.empty()) return cli_override;
  return line > 0 ? file + ":" + std::to_string(line) : file;
}

std::string Config::source_of(std::string_view full_key) const {
  auto it = origins.find(full_key);
  return it == origins.end() ? "default" : it->second.describe();
}

std::string Config::to_yaml() const {
  std::string out;
  for (const auto& s : registry()) out += (out.empty() ? "" : "\n") + dump_section(*this, s);
  return out;
}

std::string dump_yaml(const Config& config) { return config.to_yaml(); }

std::string Config::fingerprint() const {
  // Only what must agree across ranks for the model to be one model: its shape, its MoE
  // layers and how they are split. Run paths and schedules may legitimately differ.
  std::string text;
  for (const char* name : {"model", "moe", "parallel"}) text += dump_section(*this, *find_section(name));
  char buf[17];
  std::snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(fnv1a64(text)));
  return buf;
}

bool operator==(const Config& a, const Config& b) {
  for (const auto& s : registry()) {
    for (const auto& f : s.fields) {
      const ConstFieldRef x = f.cref(a), y = f.cref(b);
      const bool same = std::visit(
          [&y](auto* px) {
            using P = decltype(px);
            return *px == *std::get<P>(y);
          },
          x);
      if (!same) return false;
    }
  }
  return true;
}

std::string reference_markdown() {
  const Config defaults;
  std::string out =
      "## Reference\n\n"
      "Every key, its type, default and meaning. Types: `int` is a 64-bit integer written "
      "without a fraction; `float` accepts integers too; `bool` is `true` or `false`; `enum` "
      "is one of the listed strings.\n";
  for (const auto& s : registry()) {
    out += "\n### `" + s.name + "`\n\n" + s.doc + "\n\n";
    out += "| key | type | default | allowed | meaning |\n|---|---|---|---|---|\n";
    for (const auto& f : s.fields) {
      out += "| `" + f.full_key + "` | " + type_name(f.type) + " | `" +
             md_cell(format_value(f, defaults)) + "` | " + md_cell(f.allowed_text(true)) + " | " +
             md_cell(f.doc) + " |\n";
    }
  }
  out += "\n### Rules across keys\n\n"
         "Checked once every key is read (file, then `--set` overrides); an error names each "
         "key involved, its value and where it was set.\n\n";
  for (const auto& rule : cross_key_rules()) out += "- " + rule.doc + "\n";
  return out;
}

}  // namespace switchyard::config
