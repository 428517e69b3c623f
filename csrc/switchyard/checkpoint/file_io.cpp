#include "switchyard/checkpoint/file_io.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <vector>

#include "switchyard/common/error.h"

namespace switchyard::checkpoint {
namespace {

std::string sys_error() { return std::strerror(errno); }

uint32_t crc_update(uint32_t crc, const void* data, size_t bytes) {
  return static_cast<uint32_t>(crc32_z(crc, static_cast<const Bytef*>(data), bytes));
}

void fsync_or_throw(int fd, const std::string& what) {
  SWITCHYARD_CHECK(::fsync(fd) == 0, "checkpoint: fsync of ", what, " failed: ", sys_error());
}

std::string hex(uint32_t v) {
  char buf[16];
  std::snprintf(buf, sizeof buf, "%08x", v);
  return buf;
}

}  // namespace

AtomicFile::AtomicFile(std::string path) : path_(std::move(path)) {
  tmp_ = path_ + ".tmp-" + std::to_string(::getpid());
  fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  SWITCHYARD_CHECK(fd_ >= 0, "checkpoint: cannot create ", tmp_, ": ", sys_error());
  digest_.crc32 = crc_update(0, nullptr, 0);
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_.c_str());
  }
}

void AtomicFile::write(const void* data, size_t bytes) {
  SWITCHYARD_CHECK(fd_ >= 0, "checkpoint: write to ", path_, " after commit");
  const char* p = static_cast<const char*>(data);
  size_t left = bytes;
  while (left > 0) {
    const ssize_t n = ::write(fd_, p, left);
    if (n < 0 && errno == EINTR) continue;
    SWITCHYARD_CHECK(n > 0, "checkpoint: writing ", tmp_, " failed after ", digest_.bytes + (bytes - left),
                     " bytes: ", sys_error());
    p += n;
    left -= static_cast<size_t>(n);
  }
  digest_.crc32 = crc_update(digest_.crc32, data, bytes);
  digest_.bytes += static_cast<int64_t>(bytes);
}

FileDigest AtomicFile::commit() {
  SWITCHYARD_CHECK(fd_ >= 0, "checkpoint: ", path_, " committed twice");
  fsync_or_throw(fd_, tmp_);
  const int fd = fd_;
  fd_ = -1;
  SWITCHYARD_CHECK(::close(fd) == 0, "checkpoint: closing ", tmp_, " failed: ", sys_error());
  durable_rename(tmp_, path_);
  return digest_;
}

FileDigest write_file_atomically(const std::string& path, const std::string& text) {
  AtomicFile f(path);
  f.write(text.data(), text.size());
  return f.commit();
}

std::string read_text_file(const std::string& path) {
  ReadOnlyFile f(path);
  std::string text(static_cast<size_t>(f.size()), '\0');
  if (!text.empty()) f.read_at(0, text.data(), text.size());
  return text;
}

FileDigest digest_file(const std::string& path) {
  ReadOnlyFile f(path);
  FileDigest d;
  d.bytes = f.size();
  d.crc32 = crc_update(0, nullptr, 0);
  std::vector<char> buf(size_t{16} << 20);
  for (int64_t off = 0; off < f.size();) {
    const size_t n = static_cast<size_t>(std::min<int64_t>(static_cast<int64_t>(buf.size()), f.size() - off));
    f.read_at(off, buf.data(), n);
    d.crc32 = crc_update(d.crc32, buf.data(), n);
    off += static_cast<int64_t>(n);
  }
  return d;
}

void check_digest(const std::string& path, const FileDigest& expected) {
  const FileDigest actual = digest_file(path);
  SWITCHYARD_CHECK(actual.bytes == expected.bytes, "checkpoint file ", path, " has ", actual.bytes,
                   " bytes but its index recorded ", expected.bytes,
                   " (truncated or replaced); refusing to load it");
  SWITCHYARD_CHECK(actual.crc32 == expected.crc32, "checkpoint file ", path, " is corrupt: CRC-32 ",
                   hex(actual.crc32), " but its index recorded ", hex(expected.crc32),
                   " (changed bytes); refusing to load it");
}

void fsync_directory(const std::string& dir) {
  const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  SWITCHYARD_CHECK(fd >= 0, "checkpoint: cannot open directory ", dir, ": ", sys_error());
  const int rc = ::fsync(fd);
  const int err_no = errno;
  const std::string err = rc == 0 ? "" : sys_error();
  ::close(fd);
  // Some filesystems (and containers' overlays) refuse fsync on directories; the rename is
  // still atomic there, only its durability across a power cut is the filesystem's business.
  SWITCHYARD_CHECK(rc == 0 || err_no == EINVAL || err_no == EROFS, "checkpoint: fsync of directory ", dir,
                   " failed: ", err);
}

void durable_rename(const std::string& from, const std::string& to) {
  SWITCHYARD_CHECK(::rename(from.c_str(), to.c_str()) == 0, "checkpoint: renaming ", from, " to ", to,
                   " failed: ", sys_error());
  const std::filesystem::path parent = std::filesystem::path(to).parent_path();
  fsync_directory(parent.empty() ? "." : parent.string());
}

ReadOnlyFile::ReadOnlyFile(std::string path) : path_(std::move(path)) {
  fd_ = ::open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  SWITCHYARD_CHECK(fd_ >= 0, "checkpoint: cannot open ", path_, ": ", sys_error());
  struct stat st {};
  SWITCHYARD_CHECK(::fstat(fd_, &st) == 0, "checkpoint: cannot stat ", path_, ": ", sys_error());
  size_ = static_cast<int64_t>(st.st_size);
}

ReadOnlyFile::~ReadOnlyFile() {
  if (fd_ >= 0) ::close(fd_);
}

void ReadOnlyFile::read_at(int64_t offset, void* out, size_t bytes) const {
  char* p = static_cast<char*>(out);
  size_t done = 0;
  while (done < bytes) {
    const ssize_t n = ::pread(fd_, p + done, bytes - done, static_cast<off_t>(offset + done));
    if (n < 0 && errno == EINTR) continue;
    SWITCHYARD_CHECK(n >= 0, "checkpoint: reading ", path_, " failed: ", sys_error());
    SWITCHYARD_CHECK(n > 0, "checkpoint file ", path_, " is truncated: wanted bytes [", offset, ", ",
                     offset + static_cast<int64_t>(bytes), ") of a ", size_, "-byte file");
    done += static_cast<size_t>(n);
  }
}

}  // namespace switchyard::checkpoint
