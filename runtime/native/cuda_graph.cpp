// CascadeGraph (see cuda_graph.h). Static inputs: y and one noise buffer per stage; the time grids
// are baked in. AOTInductor's CUDA runner launches on the current stream when given none
// (AotiEngine passes none), so the capture stream below records every engine call.
#ifdef MSF_WITH_CUDA

#include "cuda_graph.h"

#include <ATen/cuda/CUDAGraph.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "error.h"

namespace msf {

CascadeGraph::CascadeGraph(const std::vector<Stage>& stages, Engine& decoder, long batch, const Plan& plan,
                           bool save_scales) {
  const c10::Device dev = stages.front().engine->device();
  c10::cuda::CUDAGuard guard(dev);
  const auto opts = at::TensorOptions().device(dev);
  y_ = at::zeros({batch}, opts.dtype(at::kLong));  // class 0 is valid for any model
  for (const auto& s : stages)
    noises_.push_back(at::randn({batch, s.cfg.in_channels, s.cfg.latent_size, s.cfg.latent_size}, opts));
  grids_ = time_grids(plan, dev);
  auto cascade = [&] { return run_cascade(stages, decoder, y_, noises_, grids_, plan, save_scales, nullptr); };
  {
    c10::cuda::CUDAStreamGuard side(c10::cuda::getStreamFromPool(false, dev.index()));
    cascade();  // warm-up: nothing of it may land in the graph
  }
  c10::cuda::device_synchronize();
  graph_ = std::make_unique<at::cuda::CUDAGraph>();
  {
    c10::cuda::CUDAStreamGuard capture(c10::cuda::getStreamFromPool(false, dev.index()));
    graph_->capture_begin();
    try {
      out_ = cascade();
    } catch (...) {
      try {
        graph_->capture_end();
      } catch (...) {
      }
      throw;
    }
    graph_->capture_end();
  }
  c10::cuda::device_synchronize();
}

CascadeGraph::~CascadeGraph() = default;

CascadeOutput CascadeGraph::replay(const at::Tensor& y, const std::vector<at::Tensor>& noises) {
  if (y.sizes() != y_.sizes())
    throw MsfError("this graph was captured for " + std::to_string(y_.numel()) + " images, got " + std::to_string(y.numel()));
  y_.copy_(y, /*non_blocking=*/true);
  for (size_t i = 0; i < noises_.size(); ++i) noises_[i].copy_(noises[i], true);
  graph_->replay();
  CascadeOutput out{out_.latent.clone(), out_.image.clone(), {}};
  for (const auto& s : out_.scales) out.scales.push_back(s.clone());
  return out;
}

long long cuda_peak_bytes(c10::Device device) {
  const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index() < 0 ? 0 : device.index());
  return stats.allocated_bytes[static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE)].peak;
}

}  // namespace msf

#endif  // MSF_WITH_CUDA
