#include "switchyard/dispatch/speculation.h"

#include <c10/util/Exception.h>

#include <cmath>
#include <sstream>

#include "switchyard/config/config.h"

namespace switchyard::dispatch {

void SpeculationOptions::validate() const {
  TORCH_CHECK_VALUE(std::isfinite(capacity_margin) && capacity_margin >= 0,
                    "SpeculationOptions: capacity_margin must be a finite number >= 0, got ", capacity_margin);
}

std::string SpeculationOptions::to_string() const {
  std::ostringstream os;
  // Full precision: ranks with margins that differ in the last bit would size blocks differently.
  os.precision(17);
  os << "capacity=" << (capacity ? "true" : "false") << " capacity_margin=" << capacity_margin
     << " routes=" << (routes ? "true" : "false");
  return os.str();
}

SpeculationOptions speculation_options_from_config(const config::Config& config) {
  SpeculationOptions o;
  o.capacity = config.speculation.capacity;
  o.capacity_margin = config.speculation.capacity_margin;
  o.routes = config.speculation.routes;
  o.validate();
  return o;
}

int64_t CapacityPredictor::capacity_for(int64_t rows, double margin) {
  // Integer result of a deterministic double computation: the same on every rank.
  return rows + static_cast<int64_t>(std::ceil(margin * static_cast<double>(rows)));
}

std::optional<PairCapacities> CapacityPredictor::capacities(double margin) const {
  if (!last_) return std::nullopt;
  PairCapacities c;
  for (int64_t n : last_->send) c.send.push_back(capacity_for(n, margin));
  for (int64_t n : last_->recv) c.recv.push_back(capacity_for(n, margin));
  return c;
}

void CapacityPredictor::observe(const std::vector<int64_t>& send_rows, const std::vector<int64_t>& recv_rows) {
  last_ = PairCapacities{send_rows, recv_rows};
}

}  // namespace switchyard::dispatch
