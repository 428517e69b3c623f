// train_moe: a complete training loop in C++ alone -- no Python anywhere -- over the same
// modules `python -m switchyard.train` drives: runtime, config, process groups,
// MoETransformer, ShardedEngine (expert parallelism + sharded dense parameters + AdamW).
//
//   mpirun -np 2 build/examples/train_moe --config configs/demo.yaml --tokens FILE [--steps N]
//   build/examples/train_moe --config configs/demo.yaml --tokens FILE --set train.lr=1e-3
//
// Why it exists: it shows that the library is usable from C++ on its own (an embedding
// application, a custom loop) and keeps that path compiled and tested.
//
// Data: a flat binary file of token ids (data.token_dtype: uint16, the nanoGPT convention,
// or uint32), from --tokens or the config's data.path. The sampler cuts it into windows of
// seq_len + 1 tokens, shuffles them per epoch with a std::mt19937_64 seeded by train.seed
// (the same order on every rank), and deals them out round-robin: ranks never read the same
// window in an epoch. There is no validation split and no checkpointing here; the Python
// trainer has both.
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iostream>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "switchyard/comm/communicator.h"
#include "switchyard/comm/process_groups.h"
#include "switchyard/common/error.h"
#include "switchyard/config/config.h"
#include "switchyard/nn/moe_transformer.h"
#include "switchyard/nn/transformer_options.h"
#include "switchyard/runtime/device.h"
#include "switchyard/runtime/runtime.h"
#include "switchyard/sharding/sharded_engine.h"
#include "switchyard/sharding/sharding_options.h"

namespace sy = switchyard;

namespace {

struct Args {
  std::string config;
  std::string tokens;                  // "" = the config's data.path
  std::vector<std::string> overrides;  // "section.key=value", as --set of the Python CLI
};

constexpr const char* kUsage =
    "usage: train_moe --config FILE [--tokens FILE] [--steps N] [--set section.key=value ...]\n";

// Returns false (after printing why) on a malformed command line.
bool parse_args(int argc, char** argv, Args& args) {
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "-h" || flag == "--help") return false;
    if (i + 1 >= argc) {
      std::cerr << "train_moe: " << flag << " needs a value\n";
      return false;
    }
    const std::string value = argv[++i];
    if (flag == "--config") {
      args.config = value;
    } else if (flag == "--tokens") {
      args.tokens = value;
    } else if (flag == "--steps") {
      args.overrides.push_back("train.steps=" + value);  // an override: the schedule sees it
    } else if (flag == "--set") {
      args.overrides.push_back(value);
    } else {
      std::cerr << "train_moe: unknown argument " << flag << "\n";
      return false;
    }
  }
  if (args.config.empty()) std::cerr << "train_moe: --config is required\n";
  return !args.config.empty();
}

// The whole token file as int64 ids (small files: a demo, not a streaming loader).
std::vector<int64_t> read_tokens(const std::string& path, const std::string& dtype, int64_t vocab) {
  std::ifstream in(path, std::ios::binary);
  SWITCHYARD_CHECK(in, "train_moe: cannot open the token file '", path, "': ", std::strerror(errno));
  const std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const size_t width = dtype == "uint32" ? 4 : 2;
  SWITCHYARD_CHECK(bytes.size() % width == 0, "train_moe: token file '", path, "' has ", bytes.size(),
                   " bytes, not a multiple of ", width, " (data.token_dtype ", dtype, ")");
  std::vector<int64_t> ids(bytes.size() / width);
  for (size_t i = 0; i < ids.size(); ++i) {
    if (width == 2) {
      uint16_t v;
      std::memcpy(&v, bytes.data() + 2 * i, 2);
      ids[i] = v;
    } else {
      uint32_t v;
      std::memcpy(&v, bytes.data() + 4 * i, 4);
      ids[i] = v;
    }
    SWITCHYARD_CHECK(ids[i] < vocab, "train_moe: token file '", path, "' holds id ", ids[i], " at position ",
                     i, ", outside model.vocab_size ", vocab);
  }
  return ids;
}

// Rank-disjoint random windows: see the file comment.
class WindowSampler {
 public:
  WindowSampler(std::vector<int64_t> tokens, int64_t seq_len, int rank, int world, uint64_t seed)
      : tokens_(std::move(tokens)), seq_len_(seq_len), rank_(rank), world_(world), seed_(seed) {
    const int64_t n = static_cast<int64_t>(tokens_.size());
    num_windows_ = n > seq_len ? (n - 1) / seq_len : 0;  // window w: tokens [w*S, w*S + S]
    SWITCHYARD_CHECK(num_windows_ >= world_, "train_moe: ", n, " tokens make ", num_windows_,
                     " windows of data.seq_len ", seq_len, " + 1; need at least one per rank (", world_, ")");
    start_epoch();
  }

  // input_ids and targets int64 [batch, seq_len]; targets are the inputs shifted by one.
  sy::nn::UnitBatch next_batch(int64_t batch) {
    at::Tensor input_BS = at::empty({batch, seq_len_}, at::kLong);
    at::Tensor target_BS = at::empty({batch, seq_len_}, at::kLong);
    int64_t* input = input_BS.data_ptr<int64_t>();
    int64_t* target = target_BS.data_ptr<int64_t>();
    for (int64_t b = 0; b < batch; ++b) {
      if (cursor_ >= order_.size()) start_epoch();
      const int64_t* window = tokens_.data() + order_[cursor_++] * seq_len_;  // seq_len + 1 tokens
      std::copy(window, window + seq_len_, input + b * seq_len_);
      std::copy(window + 1, window + 1 + seq_len_, target + b * seq_len_);
    }
    return {input_BS, target_BS};
  }

 private:
  void start_epoch() {
    std::vector<int64_t> all(num_windows_);
    std::iota(all.begin(), all.end(), 0);
    std::mt19937_64 rng(seed_ + epoch_++);  // identical on every rank: the deal is disjoint
    std::shuffle(all.begin(), all.end(), rng);
    order_.clear();
    for (int64_t i = rank_; i + (world_ - rank_) <= num_windows_; i += world_) order_.push_back(all[i]);
    cursor_ = 0;
  }

  std::vector<int64_t> tokens_;
  int64_t seq_len_, num_windows_ = 0;
  int rank_, world_;
  uint64_t seed_, epoch_ = 0;
  std::vector<int64_t> order_;
  size_t cursor_ = 0;
};

// train: linear warm-up to lr over warmup_steps, then cosine to min_lr at steps -- the
// formula of python/switchyard/training/schedule.py (step is 0-based).
double learning_rate(int64_t step, const sy::config::TrainConfig& t) {
  if (step < t.warmup_steps) return t.lr * static_cast<double>(step + 1) / static_cast<double>(t.warmup_steps);
  const int64_t decay_steps = std::max<int64_t>(1, t.steps - t.warmup_steps);
  const double progress = std::min(1.0, static_cast<double>(step - t.warmup_steps) / decay_steps);
  return t.min_lr + 0.5 * (t.lr - t.min_lr) * (1.0 + std::cos(M_PI * progress));
}

c10::Device choose_device(const std::string& wanted) {
  if (wanted == "cpu") return c10::Device(c10::kCPU);
  const c10::Device device = sy::runtime::select_device();
  SWITCHYARD_CHECK(wanted != "cuda" || device.is_cuda(),
                   "train_moe: train.device is cuda but no CUDA GPU is visible (or CUDA is not built in)");
  return device;
}

int train(const Args& args) {
  const sy::runtime::ProcessInfo& info = sy::runtime::init();
  const bool lead = info.rank == 0;
  const sy::config::Config cfg = sy::config::load_config(args.config, args.overrides);
  const sy::comm::Communicator world = sy::comm::Communicator::world();
  // Validates parallel: against the world and checks every rank read the same config.
  const sy::comm::ProcessGroups groups = sy::comm::ProcessGroups::create(cfg, world);
  const sy::config::TrainConfig& t = cfg.train;
  const c10::Device device = choose_device(t.device);

  torch::manual_seed(t.seed);  // the same initial weights on every rank
  sy::nn::MoETransformer model(sy::nn::transformer_options_from_config(cfg));
  model->to(device);
  int64_t num_parameters = 0;  // counted now: the engine keeps only this rank's share
  for (const at::Tensor& p : model->parameters()) num_parameters += p.numel();
  sy::sharding::ShardedEngine engine(model.ptr(), groups, sy::sharding::sharding_options_from_config(cfg));

  const std::string path = args.tokens.empty() ? cfg.data.path : args.tokens;
  SWITCHYARD_CHECK(!path.empty(), "train_moe: no token file: pass --tokens FILE or set data.path");
  WindowSampler data(read_tokens(path, cfg.data.token_dtype, cfg.model.vocab_size), cfg.data.seq_len,
                     world.rank(), world.size(), static_cast<uint64_t>(t.seed));

  const int64_t tokens_per_step = t.micro_batch_size * t.grad_accum * cfg.data.seq_len * world.size();
  if (lead) {
    std::printf("[train_moe] %lld parameters, %d rank(s) on %s, %lld tokens/step, %lld steps\n",
                static_cast<long long>(num_parameters), world.size(), device.str().c_str(),
                static_cast<long long>(tokens_per_step), static_cast<long long>(t.steps));
    std::fflush(stdout);
  }
  double last_loss = std::nan("");
  auto window_start = std::chrono::steady_clock::now();
  int64_t window_steps = 0;
  for (int64_t step = 0; step < t.steps; ++step) {
    const double lr = learning_rate(step, t);
    std::vector<sy::nn::UnitBatch> micro;
    for (int64_t a = 0; a < t.grad_accum; ++a) {
      sy::nn::UnitBatch b = data.next_batch(t.micro_batch_size);
      micro.push_back({b.input_ids.to(device), b.targets.to(device)});
    }
    const sy::sharding::StepResult out = engine.step(micro, lr);  // collective
    last_loss = out.loss;  // already the mean over ranks and micro-batches
    ++window_steps;
    const int64_t done = step + 1;
    if (lead && (done % std::max<int64_t>(1, t.log_every) == 0 || done == t.steps)) {
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - window_start).count();
      std::printf("step %lld/%lld  lr %.3e  loss %.4f  aux %.4f  grad_norm %.3f%s  %.0f tok/s\n",
                  static_cast<long long>(done), static_cast<long long>(t.steps), lr, out.loss, out.aux_loss,
                  out.grad_norm, out.skipped ? " (skipped)" : "",
                  window_steps * tokens_per_step / std::max(seconds, 1e-9));
      std::fflush(stdout);
      window_start = std::chrono::steady_clock::now();
      window_steps = 0;
    }
  }
  if (lead) std::printf("final loss %.4f\n", last_loss);
  std::fflush(stdout);
  sy::runtime::finalize();
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  if (!parse_args(argc, argv, args)) {
    std::cerr << kUsage;
    return 2;
  }
  // Note [One way to die] (runtime.h): an error on one rank must end every rank.
  try {
    return train(args);
  } catch (const std::exception& e) {
    sy::runtime::fatal(e.what());
  }
}
