#include "switchyard/placement/cost_model.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cmath>

namespace switchyard::placement {

void CostModel::validate() const {
  auto positive = [](double v) { return std::isfinite(v) && v > 0.0; };
  auto non_negative = [](double v) { return std::isfinite(v) && v >= 0.0; };
  TORCH_CHECK_VALUE(hidden_size >= 1, "placement.cost_model: expected hidden_size >= 1, got ", hidden_size);
  TORCH_CHECK_VALUE(positive(dtype_bytes), "placement.cost_model: expected dtype_bytes > 0, got ", dtype_bytes);
  TORCH_CHECK_VALUE(non_negative(flops_per_token), "placement.cost_model: expected flops_per_token >= 0, got ",
                    flops_per_token);
  TORCH_CHECK_VALUE(positive(rank_flops), "placement.cost_model: expected rank_flops > 0, got ", rank_flops);
  TORCH_CHECK_VALUE(non_negative(alpha_intra_s), "placement.cost_model: expected alpha_intra_s >= 0, got ",
                    alpha_intra_s);
  TORCH_CHECK_VALUE(non_negative(alpha_inter_s), "placement.cost_model: expected alpha_inter_s >= 0, got ",
                    alpha_inter_s);
  TORCH_CHECK_VALUE(positive(beta_intra_Bps), "placement.cost_model: expected beta_intra_Bps > 0, got ",
                    beta_intra_Bps);
  TORCH_CHECK_VALUE(positive(beta_inter_Bps), "placement.cost_model: expected beta_inter_Bps > 0, got ",
                    beta_inter_Bps);
  TORCH_CHECK_VALUE(ranks_per_node >= 0, "placement.cost_model: expected ranks_per_node >= 0 (0 = one node), got ",
                    ranks_per_node);
}

LayerTime project_layer_time(const std::vector<double>& rank_load, const std::vector<double>& rank_traffic,
                             const CostModel& model) {
  model.validate();
  const int64_t R = static_cast<int64_t>(rank_load.size());
  TORCH_CHECK_VALUE(R >= 1, "placement.project_layer_time: expected rank_load of at least one rank, got none");
  TORCH_CHECK_VALUE(static_cast<int64_t>(rank_traffic.size()) == R * R, "placement.project_layer_time: expected "
                    "rank_traffic of shape [", R, ", ", R, "] = ", R * R, " entries, got ", rank_traffic.size());
  for (size_t i = 0; i < rank_traffic.size(); ++i) {
    TORCH_CHECK_VALUE(std::isfinite(rank_traffic[i]) && rank_traffic[i] >= 0.0, "placement.project_layer_time: "
                      "expected finite non-negative rank_traffic, got rank_traffic[", i / R, ", ", i % R, "] = ",
                      rank_traffic[i]);
  }
  for (int64_t r = 0; r < R; ++r) {
    TORCH_CHECK_VALUE(std::isfinite(rank_load[r]) && rank_load[r] >= 0.0, "placement.project_layer_time: "
                      "expected finite non-negative rank_load, got rank_load[", r, "] = ", rank_load[r]);
  }
  const double bytes_per_token = static_cast<double>(model.hidden_size) * model.dtype_bytes;
  auto same_node = [&](int64_t a, int64_t b) {
    return model.ranks_per_node <= 0 || a / model.ranks_per_node == b / model.ranks_per_node;
  };
  // Time of one rank's side of the exchange: its off-rank volumes towards (or from) each peer.
  auto side_time = [&](int64_t r, bool sending, double* bytes_out) {
    double t = 0.0, bytes = 0.0;
    for (int64_t q = 0; q < R; ++q) {
      if (q == r) continue;
      const double tokens = sending ? rank_traffic[r * R + q] : rank_traffic[q * R + r];
      if (tokens <= 0.0) continue;
      const double b = tokens * bytes_per_token;
      bytes += b;
      t += same_node(r, q) ? model.alpha_intra_s + b / model.beta_intra_Bps
                           : model.alpha_inter_s + b / model.beta_inter_Bps;
    }
    if (bytes_out != nullptr) *bytes_out = bytes;
    return t;
  };
  LayerTime out;
  for (int64_t r = 0; r < R; ++r) {
    double sent = 0.0;
    const double t = std::max(side_time(r, true, &sent), side_time(r, false, nullptr));
    if (t > out.all_to_all_s) {
      out.all_to_all_s = t;
      out.all_to_all_rank = r;
    }
    out.max_send_bytes = std::max(out.max_send_bytes, sent);
    if (rank_load[r] > rank_load[out.compute_rank]) out.compute_rank = r;
  }
  out.compute_s = rank_load[out.compute_rank] * model.flops_per_token / model.rank_flops;
  out.total_s = out.compute_s + 2.0 * out.all_to_all_s;
  return out;
}

}  // namespace switchyard::placement
