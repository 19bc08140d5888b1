// The whole cascade as one CUDA graph (the C++ twin of runtime/graphs.py's CascadeGraph): every
// step of every scale, the Up/Down between them and the VAE decode, captured once for a batch size
// and plan, then replayed with new class ids and noise copied into static input buffers.
// Compiled only with -DMSF_WITH_CUDA=ON against a CUDA libtorch (docs/NATIVE.md).
#pragma once

#ifdef MSF_WITH_CUDA

#include <ATen/core/Tensor.h>

#include <memory>
#include <vector>

#include "sampler.h"

namespace at::cuda {
struct CUDAGraph;
}

namespace msf {

class CascadeGraph {
 public:
  // Warm-up run on a side stream (lazy init and autotuning stay out of the graph), then capture.
  CascadeGraph(const std::vector<Stage>& stages, Engine& decoder, long batch, const Plan& plan, bool save_scales);
  ~CascadeGraph();
  CascadeGraph(const CascadeGraph&) = delete;
  CascadeGraph& operator=(const CascadeGraph&) = delete;

  // Copy y (B,) int64 and the per-stage noise into the static buffers, replay, copy the outputs out.
  CascadeOutput replay(const at::Tensor& y, const std::vector<at::Tensor>& noises);

 private:
  at::Tensor y_;
  std::vector<at::Tensor> noises_, grids_;
  CascadeOutput out_;
  std::unique_ptr<at::cuda::CUDAGraph> graph_;
};

// Peak bytes the CUDA caching allocator handed out on `device` (for the peak memory line).
long long cuda_peak_bytes(c10::Device device);

}  // namespace msf

#endif  // MSF_WITH_CUDA
