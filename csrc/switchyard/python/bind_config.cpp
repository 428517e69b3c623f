// Python view of switchyard::config: load_config() returns the C++ Config itself (so later
// bindings can take it back without conversion), with attribute access to sections and
// fields driven by the field registry rather than 60 hand-written properties.
//
//   cfg = load_config("configs/demo.yaml", ["moe.top_k=1"])
//   cfg.moe.top_k, cfg.to_dict(), cfg.to_yaml(), cfg.fingerprint(), cfg.source_of("moe.top_k")
#include <memory>
#include <string>
#include <vector>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "switchyard/common/error.h"
#include "switchyard/config/config.h"
#include "switchyard/config/config_registry.h"
#include "switchyard/python/bindings.h"

namespace py = pybind11;

namespace switchyard::python {
namespace {

using config::Config;
using config::ConstFieldRef;
using config::SectionInfo;

// ConfigError (a ValueError subclass). Owned by the module it is added to.
PyObject* g_config_error = nullptr;

// Runs f; a switchyard::Error becomes ConfigError with the very same message. Translated
// here rather than by a global exception translator, so that the class does not depend on
// the order in which other bindings register theirs.
template <typename F>
auto translating_errors(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const Error& e) {
    PyErr_SetString(g_config_error, e.what());
    throw py::error_already_set();
  }
}

py::object to_python(const ConstFieldRef& ref) {
  return std::visit([](auto* p) -> py::object { return py::cast(*p); }, ref);
}

// One section of a Config, read-only. Shares ownership so `s = load_config(p).moe` works.
struct SectionView {
  std::shared_ptr<const Config> config;
  const SectionInfo* section;
};

py::dict section_dict(const Config& c, const SectionInfo& s) {
  py::dict d;
  for (const auto& f : s.fields) d[py::str(f.key)] = to_python(f.cref(c));
  return d;
}

std::string names_of_sections() {
  std::string out;
  for (const auto& s : config::registry()) out += (out.empty() ? "" : ", ") + s.name;
  return out;
}

SectionView get_section(const std::shared_ptr<Config>& self, const std::string& name) {
  const SectionInfo* s = config::find_section(name);
  if (!s) {
    std::vector<std::string> names;
    for (const auto& sec : config::registry()) names.push_back(sec.name);
    std::string near = config::closest_match(name, names);
    throw py::attribute_error("Config has no section '" + name + "'" +
                              (near.empty() ? " (sections: " + names_of_sections() + ")"
                                            : "; did you mean '" + near + "'?"));
  }
  return SectionView{self, s};
}

py::object get_field(const SectionView& v, const std::string& key) {
  const config::FieldInfo* f = v.section->find(key);
  if (!f) {
    std::vector<std::string> keys;
    for (const auto& field : v.section->fields) keys.push_back(field.key);
    std::string near = config::closest_match(key, keys);
    throw py::attribute_error("config section '" + v.section->name + "' has no key '" + key + "'" +
                              (near.empty() ? "" : "; did you mean '" + near + "'?"));
  }
  return to_python(f->cref(*v.config));
}

// The usual attribute names (methods, dunders), to which __dir__ adds the registry's names.
py::list object_dir(const py::object& self) {
  return py::module_::import("builtins").attr("object").attr("__dir__")(self);
}

std::shared_ptr<Config> load(const std::string& path, const std::vector<std::string>& overrides) {
  return translating_errors([&] { return std::make_shared<Config>(config::load_config(path, overrides)); });
}

std::shared_ptr<Config> loads(const std::string& text, const std::string& source,
                              const std::vector<std::string>& overrides) {
  return translating_errors(
      [&] { return std::make_shared<Config>(config::load_config_string(text, source, overrides)); });
}

}  // namespace

void bind_config(py::module_& m) {
  // Not a static py::object: the module attribute keeps the type alive, and a static
  // would be destroyed after the interpreter at exit.
  py::exception<Error> config_error(m, "ConfigError", PyExc_ValueError);
  g_config_error = config_error.ptr();
  py::setattr(config_error, "__doc__",
              py::str("An invalid configuration; the message names the file and line (or the "
                      "--set override) and the key."));

  py::class_<SectionView>(m, "ConfigSection", "One read-only section of a Config (e.g. cfg.moe).")
      .def("__getattr__", &get_field, py::arg("key"))
      .def("__setattr__",
           [](const SectionView& v, const std::string& key, py::object) {
             throw py::attribute_error("Config is read-only; to change " + v.section->name + "." + key +
                                       " use cfg.with_overrides([\"" + v.section->name + "." + key +
                                       "=...\"])");
           })
      .def("__dir__",
           [](py::object self) {
             py::list names = object_dir(self);
             for (const auto& f : self.cast<const SectionView&>().section->fields) names.append(f.key);
             return names;
           })
      .def("to_dict", [](const SectionView& v) { return section_dict(*v.config, *v.section); })
      .def_property_readonly("section_name", [](const SectionView& v) { return v.section->name; })
      .def("__repr__", [](const SectionView& v) {
        std::string out = v.section->name + "(";
        for (size_t i = 0; i < v.section->fields.size(); ++i) {
          const auto& f = v.section->fields[i];
          out += (i ? ", " : "") + f.key + "=" + config::format_value(f, *v.config);
        }
        return out + ")";
      });

  py::class_<Config, std::shared_ptr<Config>>(m, "Config",
                                              "A validated run configuration (see docs/configuration.md).")
      .def(py::init<>(), "Every key at its default.")
      .def("__getattr__", &get_section, py::arg("section"))
      .def("__dir__",
           [](py::object self) {
             py::list names = object_dir(self);
             for (const auto& s : config::registry()) names.append(s.name);
             return names;
           })
      .def("to_dict",
           [](const Config& c) {
             py::dict d;
             for (const auto& s : config::registry()) d[py::str(s.name)] = section_dict(c, s);
             return d;
           },
           "Nested dict {section: {key: value}} of every key.")
      .def("to_yaml", &Config::to_yaml, "The resolved config as YAML; loads back to an equal Config.")
      .def("fingerprint", &Config::fingerprint,
           "16 hex digits identifying the model, moe and parallel sections; equal on every rank "
           "of a job.")
      .def("source_of", [](const Config& c, const std::string& key) { return c.source_of(key); },
           py::arg("key"), "Where a key was set: 'file:line', '--set key=value' or 'default'.")
      .def("validate_for_world",
           [](const Config& c, int world_size) {
             translating_errors([&] { config::validate_for_world(c, world_size); });
           },
           py::arg("world_size"), "Raise ConfigError unless the config fits a job of this many ranks.")
      .def("with_overrides",
           [](const Config& c, const std::vector<std::string>& overrides) {
             auto copy = std::make_shared<Config>(c);
             translating_errors([&] { config::apply_overrides(*copy, overrides); });
             return copy;
           },
           py::arg("overrides"), "A copy with 'section.key=value' overrides applied and validated.")
      .def("__eq__", [](const Config& a, const Config& b) { return a == b; }, py::is_operator())
      .def("__repr__", [](const Config& c) { return "<switchyard Config " + c.fingerprint() + ">"; })
      .def(py::pickle([](const Config& c) { return c.to_yaml(); },
                      [](const std::string& text) {
                        return loads(text, "<pickled config>", {});
                      }));

  m.def("load_config", &load, py::arg("path"), py::arg("overrides") = std::vector<std::string>{},
        "Read, validate and return the Config in a YAML file, after applying 'section.key=value' "
        "overrides. Raises ConfigError (a ValueError) naming the file, line and key.");
  m.def("loads_config", &loads, py::arg("text"), py::arg("source") = "<string>",
        py::arg("overrides") = std::vector<std::string>{},
        "Like load_config for YAML text; `source` names it in error messages.");
  m.def("config_reference_markdown", &config::reference_markdown,
        "The markdown reference of every key, as in docs/configuration.md.");
}

}  // namespace switchyard::python
