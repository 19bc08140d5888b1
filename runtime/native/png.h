// Images out: the grid of runtime/cli.py's to_grid and a PNG written atomically (encoded in memory
// with libpng, then a temporary file in the target folder, fsync, rename), so a failed or killed run
// never leaves a partial PNG behind.
#pragma once

#include <ATen/core/Tensor.h>

#include <filesystem>

namespace msf {

// (B, 3, H, W) in [-1, 1] -> (rows*H + gaps, ncol*W + gaps, 3) uint8 on the CPU, white 2 px gaps.
at::Tensor to_grid(const at::Tensor& images, long ncol, long pad = 2);

class PngWriter {
 public:
  // Fail early (before sampling) when `out` cannot be written: runtime.cli.check_output's checks.
  static void check_output(const std::filesystem::path& out);
  // Encode an (H, W, 3) uint8 tensor and put it at `out` atomically, with the usual permissions.
  static void write(const std::filesystem::path& out, const at::Tensor& hwc);
};

// img.png -> img.scale0.png: where --save-scales puts the accumulation after scale i.
std::filesystem::path scale_path(const std::filesystem::path& out, size_t i);

}  // namespace msf
