// Python view of the Hugging Face conversions (submodule switchyard._C.hf). The public
// Python API is python/switchyard/hf.py; docs/huggingface.md is the user's page.
//
//   _C.hf.read_config(dir)                       -> dict (HfModelConfig's fields, overrides)
//   _C.hf.import_checkpoint(dir, dtype=None)     -> dict(architecture, overrides, state, ignored,
//                                                   ignored_fields, files, source_dtype)
//   _C.hf.export_checkpoint(ckpt, out, format, ignore_capacity=False, dtype=None)
//                                                -> dict(out_dir, architecture, num_tensors, notes)
//   _C.hf.export_config(cfg, format, ignore_capacity=False) -> (config.json text, notes)
#include <torch/python.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "switchyard/checkpoint/hf_export.h"
#include "switchyard/checkpoint/hf_import.h"
#include "switchyard/config/config.h"
#include "switchyard/nn/transformer_options.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"

namespace py = pybind11;

namespace switchyard::python {

namespace {

py::dict config_dict(const checkpoint::HfModelConfig& m) {
  py::dict d;
  d["architecture"] = m.architecture;
  d["vocab_size"] = m.vocab_size;
  d["d_model"] = m.d_model;
  d["n_layers"] = m.n_layers;
  d["n_heads"] = m.n_heads;
  d["n_kv_heads"] = m.n_kv_heads;
  d["ffn_hidden"] = m.ffn_hidden;
  d["max_seq_len"] = m.max_seq_len;
  d["rope_theta"] = m.rope_theta;
  d["norm_eps"] = m.norm_eps;
  d["tie_embeddings"] = m.tie_embeddings;
  d["qkv_bias"] = m.qkv_bias;
  d["init_std"] = m.init_std ? py::cast(*m.init_std) : py::none();
  d["source_dtype"] = m.dtype;
  d["ignored_fields"] = m.ignored_fields;
  d["overrides"] = m.overrides();
  return d;
}

std::optional<at::ScalarType> scalar_type(const py::object& dtype) {
  if (dtype.is_none()) return std::nullopt;
  return torch::python::detail::py_object_to_dtype(dtype);
}

}  // namespace

void bind_hf(py::module_& m) {
  py::module_ h = m.def_submodule("hf", "Hugging Face checkpoints: import Llama/Mistral/Qwen2, export "
                                        "Mixtral/Qwen2-MoE (docs/huggingface.md)");
  h.def("read_config",
        [](const std::string& dir) { return config_dict(translating([&] { return checkpoint::read_hf_config(dir); })); },
        py::arg("dir"));
  h.def("import_checkpoint",
        [](const std::string& dir, const py::object& dtype) {
          checkpoint::HfImportOptions o;
          o.dtype = scalar_type(dtype);
          checkpoint::HfImport r = released([&] { return checkpoint::import_hf_checkpoint(dir, o); });
          py::dict d = config_dict(r.config);
          d["state"] = r.state;
          d["ignored"] = r.ignored;
          d["files"] = r.files;
          return d;
        },
        py::arg("dir"), py::arg("dtype") = py::none());
  h.def("export_checkpoint",
        [](const std::string& path, const std::string& out_dir, const std::string& format, bool ignore_capacity,
           const py::object& dtype) {
          checkpoint::HfExportOptions o;
          o.format = translating([&] { return checkpoint::hf_format_from_string(format); });
          o.ignore_capacity = ignore_capacity;
          o.dtype = scalar_type(dtype);
          const checkpoint::HfExportResult r =
              released([&] { return checkpoint::export_hf_checkpoint(path, out_dir, o); });
          py::dict d;
          d["out_dir"] = r.out_dir;
          d["architecture"] = r.architecture;
          d["num_tensors"] = r.num_tensors;
          d["notes"] = r.notes;
          return d;
        },
        py::arg("path"), py::arg("out_dir"), py::arg("format"), py::arg("ignore_capacity") = false,
        py::arg("dtype") = py::none());
  h.def("export_config",
        [](const config::Config& cfg, const std::string& format, bool ignore_capacity) {
          return translating([&] {
            checkpoint::HfExportOptions o;
            o.format = checkpoint::hf_format_from_string(format);
            o.ignore_capacity = ignore_capacity;
            std::vector<std::string> notes;
            std::string text = checkpoint::hf_export_config(nn::transformer_options_from_config(cfg), o, &notes);
            return std::make_pair(text, notes);
          });
        },
        py::arg("config"), py::arg("format"), py::arg("ignore_capacity") = false,
        "(config.json text, notes) the export of a model with this config would write; refuses "
        "(ValueError naming our config key) what the format cannot express.");
}

}  // namespace switchyard::python
