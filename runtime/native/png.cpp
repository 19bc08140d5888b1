// Grid and PNG (see png.h).
#include "png.h"

#include <ATen/ops/full.h>
#include <fcntl.h>
#include <png.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <memory>
#include <vector>

#include "error.h"

namespace msf {

namespace fs = std::filesystem;

at::Tensor to_grid(const at::Tensor& images, long ncol, long pad) {
  // ((x.clamp(-1, 1) + 1) * 127.5).round().to(uint8), as runtime.cli.to_grid
  at::Tensor x = images.detach().to(at::kFloat).cpu().clamp(-1, 1).add(1).mul(127.5).round().to(at::kByte);  // (B,3,H,W)
  const long B = x.size(0), H = x.size(2), W = x.size(3);
  if (B == 1) return x[0].permute({1, 2, 0}).contiguous();
  ncol = std::max(1L, std::min(ncol, B));
  const long nrow = (B + ncol - 1) / ncol;
  at::Tensor grid = at::full({3, nrow * H + (nrow - 1) * pad, ncol * W + (ncol - 1) * pad}, 255,
                             at::TensorOptions().dtype(at::kByte));
  for (long k = 0; k < B; ++k) {
    const long r = k / ncol, c = k % ncol;
    grid.narrow(1, r * (H + pad), H).narrow(2, c * (W + pad), W).copy_(x[k]);
  }
  return grid.permute({1, 2, 0}).contiguous();  // (H', W', 3)
}

fs::path scale_path(const fs::path& out, size_t i) {
  return out.parent_path() / (out.stem().string() + ".scale" + std::to_string(i) + out.extension().string());
}

namespace {

std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

// A temporary file next to the target that is removed unless committed (renamed into place).
class TempFile {
 public:
  explicit TempFile(const fs::path& target) {
    std::string tmpl = (target.parent_path() / ("." + target.filename().string() + ".XXXXXX")).string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    fd_ = mkstemp(buf.data());
    if (fd_ < 0) throw MsfError("cannot write --out " + target.string() + ": " + std::strerror(errno));
    path_ = buf.data();
  }
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!committed_) ::unlink(path_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;

  void write_all(const std::vector<unsigned char>& data, const fs::path& target) {
    size_t done = 0;
    while (done < data.size()) {
      ssize_t n = ::write(fd_, data.data() + done, data.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) throw MsfError("cannot write " + target.string() + ": " + std::strerror(errno));
      done += static_cast<size_t>(n);
    }
  }

  void commit(const fs::path& target) {
    const mode_t mask = ::umask(0);  // mkstemp made it 0600; give the image the usual permissions
    ::umask(mask);
    if (::fchmod(fd_, 0666 & ~mask) != 0 || ::fsync(fd_) != 0 || ::close(fd_) != 0) {
      fd_ = -1;
      throw MsfError("cannot write " + target.string() + ": " + std::strerror(errno));
    }
    fd_ = -1;
    if (::rename(path_.c_str(), target.c_str()) != 0)
      throw MsfError("cannot write " + target.string() + ": " + std::strerror(errno));
    committed_ = true;
  }

 private:
  int fd_ = -1;
  std::string path_;
  bool committed_ = false;
};

// libpng's simplified API (1.6+): whole image to memory, errors as a return code and a message,
// so no setjmp/longjmp crosses our C++ frames.
std::vector<unsigned char> encode(const at::Tensor& hwc) {
  at::Tensor img = hwc.to(at::kByte).contiguous();  // (H, W, 3)
  png_image image;
  std::memset(&image, 0, sizeof image);
  image.version = PNG_IMAGE_VERSION;
  image.width = static_cast<png_uint_32>(img.size(1));
  image.height = static_cast<png_uint_32>(img.size(0));
  image.format = PNG_FORMAT_RGB;
  png_alloc_size_t size = 0;
  const void* data = img.data_ptr<uint8_t>();
  if (!png_image_write_to_memory(&image, nullptr, &size, 0, data, 0, nullptr))
    throw MsfError(std::string("PNG encoding failed: ") + image.message);
  std::vector<unsigned char> out(size);
  if (!png_image_write_to_memory(&image, out.data(), &size, 0, data, 0, nullptr))
    throw MsfError(std::string("PNG encoding failed: ") + image.message);
  out.resize(size);
  png_image_free(&image);
  return out;
}

}  // namespace

void PngWriter::check_output(const fs::path& out) {
  if (lower(out.extension().string()) != ".png") throw MsfError("--out must be a .png path, got " + out.string());
  if (fs::is_directory(out))
    throw MsfError("--out " + out.string() + " is a folder; give a file name such as " + (out / "img.png").string());
  fs::path parent = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  for (fs::path folder = parent;; folder = folder.parent_path()) {  // the nearest existing ancestor must be a folder
    std::error_code ec;
    if (fs::exists(folder, ec)) {
      if (!fs::is_directory(folder))
        throw MsfError("cannot write --out " + out.string() + ": " + folder.string() + " is a file, not a folder");
      break;
    }
    if (folder == folder.parent_path() || folder.empty()) break;
  }
  std::error_code ec;
  fs::create_directories(parent, ec);
  if (ec) throw MsfError("cannot write --out " + out.string() + ": " + ec.message());
  std::string probe = (parent / ("." + out.filename().string() + ".XXXXXX")).string();
  std::vector<char> buf(probe.begin(), probe.end());
  buf.push_back('\0');
  int fd = mkstemp(buf.data());
  if (fd < 0) throw MsfError("cannot write --out " + out.string() + ": " + std::strerror(errno));
  ::close(fd);
  ::unlink(buf.data());
}

void PngWriter::write(const fs::path& out, const at::Tensor& hwc) {
  const std::vector<unsigned char> bytes = encode(hwc);  // all of it in memory first
  fs::path target = out.parent_path().empty() ? fs::path(".") / out : out;
  TempFile tmp(target);
  tmp.write_all(bytes, out);
  tmp.commit(target);
}

}  // namespace msf
