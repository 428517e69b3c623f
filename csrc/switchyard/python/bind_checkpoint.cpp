// Python view of switchyard::checkpoint (submodule switchyard._C.checkpoint). The public
// Python API is python/switchyard/checkpoint.py; docs/checkpoints.md is the user's page.
#include <torch/python.h>

#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

#include "switchyard/checkpoint/checkpoint.h"
#include "switchyard/checkpoint/safetensors.h"
#include "switchyard/checkpoint/upcycle.h"
#include "switchyard/nn/transformer_options.h"
#include "switchyard/python/bindings.h"
#include "switchyard/python/translate_errors.h"

namespace py = pybind11;

namespace switchyard::python {

void bind_checkpoint(py::module_& m) {
  py::module_ c = m.def_submodule("checkpoint", "Sharded, resharding checkpoints (docs/checkpoints.md)");
  c.attr("FORMAT_VERSION") = checkpoint::kFormatVersion;
  c.def("save",
        [](const std::string& root, int64_t step, sharding::ShardedEngine& engine, int64_t keep_last,
           const std::string& config_yaml, const std::map<std::string, std::string>& metadata,
           const std::map<std::string, at::Tensor>& rank_tensors) {
          checkpoint::SaveOptions o{keep_last, config_yaml, metadata, rank_tensors};
          return released([&] { return checkpoint::save(root, step, engine, o); });
        },
        py::arg("root"), py::arg("step"), py::arg("engine"), py::arg("keep_last"), py::arg("config_yaml"),
        py::arg("metadata"), py::arg("rank_tensors"));
  c.def("load",
        [](const std::string& path, sharding::ShardedEngine& engine, const config::Config* current) {
          const checkpoint::LoadResult r = released([&] { return checkpoint::load(path, engine, current); });
          py::dict d;
          d["path"] = r.path;
          d["step"] = r.step;
          d["saved_world_size"] = r.saved_world_size;
          d["config_yaml"] = r.config_yaml;
          d["metadata"] = r.metadata;
          d["rank_tensors"] = r.rank_tensors;
          d["changed_keys"] = r.changed_keys;
          return d;
        },
        py::arg("path"), py::arg("engine"), py::arg("current") = nullptr);
  c.def("write_safetensors",
        [](const std::string& path, const std::vector<std::pair<std::string, at::Tensor>>& tensors,
           const std::map<std::string, std::string>& metadata) {
          released([&] { checkpoint::write_safetensors(path, tensors, metadata); return 0; });
        },
        py::arg("path"), py::arg("tensors"), py::arg("metadata"),
        "Writes [(name, tensor), ...] as one safetensors file, atomically.");
  using checkpoint::UpcycleOptions;
  py::class_<UpcycleOptions>(c, "UpcycleOptions", "How upcycle() builds the target's experts (upcycle.h).")
      .def(py::init<>())
      .def_readwrite("method", &UpcycleOptions::method)
      .def_readwrite("noise", &UpcycleOptions::noise)
      .def_readwrite("drop_fraction", &UpcycleOptions::drop_fraction)
      .def_readwrite("shared_fraction", &UpcycleOptions::shared_fraction)
      .def_readwrite("router_std", &UpcycleOptions::router_std)
      .def_readwrite("seed", &UpcycleOptions::seed)
      .def_readwrite("extra_copies", &UpcycleOptions::extra_copies);
  auto result_dict = [](const checkpoint::UpcycleResult& r) {
    py::dict d;
    d["state"] = r.state;
    d["preserves_function"] = r.preserves_function;
    d["reason"] = r.reason;
    d["consumed"] = r.consumed;
    return d;
  };
  c.def("upcycle",
        [result_dict](const std::map<std::string, at::Tensor>& source, const config::Config& from,
                      const config::Config& to, const UpcycleOptions& o) {
          return result_dict(released([&] {
            return checkpoint::upcycle(source, nn::transformer_options_from_config(from),
                                       nn::transformer_options_from_config(to), o);
          }));
        },
        py::arg("source"), py::arg("from_config"), py::arg("to_config"), py::arg("options"));
  c.def("upcycle_checkpoint",
        [result_dict](const std::string& source, const config::Config& target, const std::string& out_root,
                      const UpcycleOptions& o) {
          return result_dict(released([&] { return checkpoint::upcycle_checkpoint(source, target, out_root, o); }));
        },
        py::arg("source"), py::arg("target"), py::arg("out_root"), py::arg("options"));
  c.def("write_initial_checkpoint",
        [](const std::map<std::string, at::Tensor>& state, const config::Config& cfg, const std::string& out_root,
           const std::map<std::string, std::string>& metadata) {
          return released([&] { return checkpoint::write_initial_checkpoint(state, cfg, out_root, metadata); });
        },
        py::arg("state"), py::arg("config"), py::arg("out_root"), py::arg("metadata"));
  c.def("step_directory_name", &checkpoint::step_directory_name, py::arg("step"));
  c.def("list_checkpoints", [](const std::string& root) { return translating([&] { return checkpoint::list_checkpoints(root); }); },
        py::arg("root"));
  c.def("latest_checkpoint", [](const std::string& root) { return translating([&] { return checkpoint::latest_checkpoint(root); }); },
        py::arg("root"));
  c.def("resolve_checkpoint", [](const std::string& p) { return translating([&] { return checkpoint::resolve_checkpoint(p); }); },
        py::arg("path"));
  c.def("verify", [](const std::string& p) { return released([&] { return checkpoint::verify(p); }); }, py::arg("path"));
  c.def("read_full_state",
        [](const std::string& p, bool optimizer) { return released([&] { return checkpoint::read_full_state(p, optimizer); }); },
        py::arg("path"), py::arg("optimizer") = false);
  c.def("read_config_yaml", [](const std::string& p) { return translating([&] { return checkpoint::read_config_yaml(p); }); },
        py::arg("path"));
  c.def("read_metadata", [](const std::string& p) { return translating([&] { return checkpoint::read_metadata(p); }); },
        py::arg("path"));
}

}  // namespace switchyard::python
