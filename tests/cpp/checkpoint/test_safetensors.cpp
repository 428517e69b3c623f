// The safetensors writer and reader, and the atomic file layer under them: round trips of
// every dtype, ranged reads, and headers that lie about their data refused naming the file.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "switchyard/checkpoint/file_io.h"
#include "switchyard/checkpoint/safetensors.h"
#include "switchyard/common/error.h"
#include "../common/error_of.h"

namespace ck = switchyard::checkpoint;
namespace fs = std::filesystem;

namespace {

fs::path temp_dir() {
  fs::path d = fs::temp_directory_path() / ("sy_safetensors_" + std::to_string(::getpid()));
  fs::create_directories(d);
  return d;
}

void write_raw(const fs::path& p, const std::string& header, const std::string& data) {
  std::ofstream f(p, std::ios::binary);
  const uint64_t n = header.size();
  f.write(reinterpret_cast<const char*>(&n), 8);
  f << header << data;
}

using switchyard::testing::error_of;

}  // namespace

TEST(Safetensors, RoundTripsEveryDtypeAndMetadata) {
  const fs::path p = temp_dir() / "all.safetensors";
  std::vector<std::pair<std::string, at::Tensor>> tensors = {
      {"f64", torch::randn({3, 4}, torch::kDouble)}, {"f32", torch::randn({5})},
      {"bf16", torch::randn({2, 2}).to(torch::kBFloat16)}, {"f16", torch::randn({7}).to(torch::kHalf)},
      {"i64", torch::arange(6, torch::kLong).view({2, 3})}, {"u8", torch::randint(0, 255, {9}, torch::kByte)},
      {"empty", torch::zeros({0, 4})}, {"scalar", torch::tensor(3.5)},
      {"strided", torch::randn({4, 6}).t()},  // non-contiguous input is written contiguous
  };
  const ck::FileDigest d = ck::write_safetensors(p.string(), tensors, {{"step", "7"}});
  EXPECT_EQ(d.bytes, static_cast<int64_t>(fs::file_size(p)));
  const ck::FileDigest again = ck::digest_file(p.string());
  EXPECT_EQ(again.crc32, d.crc32);
  const ck::SafetensorsReader r(p.string());
  EXPECT_EQ(r.metadata().at("step"), "7");
  for (const auto& [name, t] : tensors) {
    const at::Tensor back = r.read(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_TRUE(torch::equal(back, t.contiguous())) << name;
  }
  // Ranged read of elements [3, 8) of a [3, 4] tensor.
  at::Tensor part = torch::empty({5}, torch::kDouble);
  r.read_elements("f64", 3, 5, part);
  EXPECT_TRUE(torch::equal(part, tensors[0].second.flatten().narrow(0, 3, 5)));
  EXPECT_NE(error_of([&] { r.read_elements("f64", 10, 5, part); }).find("outside its 12"), std::string::npos);
  EXPECT_NE(error_of([&] { r.read("nope"); }).find("has no tensor 'nope'"), std::string::npos);
  fs::remove_all(p.parent_path());
}

TEST(Safetensors, HeadersThatDoNotMatchTheDataAreRefused) {
  const fs::path dir = temp_dir();
  const std::string data(16, '\0');
  struct Case {
    std::string header, needle;
  };
  const Case cases[] = {
      {R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 20]}})", "outside the file's 16 data bytes"},
      {R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", "spans 16 bytes but its shape and dtype need 12"},
      {R"({"a": {"dtype": "Q4", "shape": [4], "data_offsets": [0, 16]}})", "unsupported dtype \"Q4\""},
      {R"({"a": {"dtype": "F32", "shape": [4]}})", "malformed header"},
      {R"({"a": )", "not valid JSON"},
  };
  for (const Case& c : cases) {
    const fs::path p = dir / "bad.safetensors";
    write_raw(p, c.header, data);
    const std::string err = error_of([&] { ck::SafetensorsReader r(p.string()); });
    EXPECT_NE(err.find(p.string()), std::string::npos) << err;
    EXPECT_NE(err.find(c.needle), std::string::npos) << err;
  }
  // A header length past the end of the file.
  {
    std::ofstream f(dir / "short.safetensors", std::ios::binary);
    const uint64_t n = 1000;
    f.write(reinterpret_cast<const char*>(&n), 8);
  }
  EXPECT_NE(error_of([&] { ck::SafetensorsReader r((dir / "short.safetensors").string()); }).find("header length 1000"),
            std::string::npos);
  fs::remove_all(dir);
}

TEST(AtomicFile, AnUncommittedFileLeavesNothingAndACommittedOneReplacesAtomically) {
  const fs::path dir = temp_dir();
  const fs::path p = dir / "f.txt";
  ck::write_file_atomically(p.string(), "old");
  {
    ck::AtomicFile f(p.string());
    f.write("new", 3);
    // destroyed without commit(): the old content stays, the temporary is removed
  }
  EXPECT_EQ(ck::read_text_file(p.string()), "old");
  EXPECT_EQ(std::distance(fs::directory_iterator(dir), fs::directory_iterator{}), 1);
  const ck::FileDigest d = ck::write_file_atomically(p.string(), "new");
  EXPECT_EQ(ck::read_text_file(p.string()), "new");
  ck::check_digest(p.string(), d);
  const std::string err = error_of([&] { ck::check_digest(p.string(), ck::FileDigest{3, d.crc32 ^ 1u}); });
  EXPECT_NE(err.find("is corrupt: CRC-32"), std::string::npos) << err;
  fs::remove_all(dir);
}
