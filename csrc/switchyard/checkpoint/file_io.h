// Durable file writing and checked reading for checkpoints.
//
// Note [Atomic checkpoint writes]
// A checkpoint must never be seen half-written: a crash (or kill -9) in the middle of a save
// has to leave the previous checkpoints exactly as they were and the new one visibly absent.
// Every file is therefore written to "<path>.tmp-<pid>", fsync'ed, and renamed over its
// final name (rename is atomic within a filesystem); a checkpoint directory is assembled
// under "<name>.partial" and renamed into place only after its index -- written last -- is
// durable; the parent directory is fsync'ed after each rename so the new name itself
// survives a power cut. Readers only ever look at directories with a final name and an
// index, and check every file's size and CRC-32 against the index before using a byte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace switchyard::checkpoint {

// What the index records of each file, and checks on load.
struct FileDigest {
  int64_t bytes = 0;
  uint32_t crc32 = 0;  // zlib's CRC-32 of the whole file
};

// Writes one file atomically (Note [Atomic checkpoint writes]): write() appends, commit()
// makes it durable under its final name; destroying an uncommitted AtomicFile removes the
// temporary. Errors throw switchyard::Error naming the path and the system's message.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t bytes);
  // fsync, close, rename over the final path, fsync the directory. Returns the size and
  // CRC-32 of what was written.
  FileDigest commit();
  const std::string& path() const { return path_; }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
  FileDigest digest_;
};

// Writes `text` to `path` atomically.
FileDigest write_file_atomically(const std::string& path, const std::string& text);
// Reads a whole (small) file; throws naming it when it cannot be read.
std::string read_text_file(const std::string& path);
// Streams the file: its size and CRC-32.
FileDigest digest_file(const std::string& path);
// Throws, naming the file, the recorded and the actual size or CRC, when they differ.
void check_digest(const std::string& path, const FileDigest& expected);
void fsync_directory(const std::string& dir);
// Renames `from` to `to` (files or directories) and fsyncs the parent of `to`.
void durable_rename(const std::string& from, const std::string& to);

// A read-only file for positioned reads (pread): many ranges without a shared offset.
class ReadOnlyFile {
 public:
  explicit ReadOnlyFile(std::string path);
  ~ReadOnlyFile();
  ReadOnlyFile(const ReadOnlyFile&) = delete;
  ReadOnlyFile& operator=(const ReadOnlyFile&) = delete;
  int64_t size() const { return size_; }
  const std::string& path() const { return path_; }
  // Exactly `bytes` bytes at `offset`, or a switchyard::Error naming the file ("truncated").
  void read_at(int64_t offset, void* out, size_t bytes) const;

 private:
  std::string path_;
  int fd_ = -1;
  int64_t size_ = 0;
};

}  // namespace switchyard::checkpoint
