// Algorithm 3 (MSF_PAPER.md section 3.4) in C++, a line-for-line twin of runtime/sampler.py with
// msf_train/flow.py (time grid with shift, Euler, Heun, CFG of Eq. 7) and msf_train/factorize.py
// (the one Up/Down: bilinear, align_corners=False, no antialias):
//
//     acc = 0
//     for scale i = 0..N:
//         f_i   = ODE solve of v(z_t, t | y[, Down(acc, h_i)]) from noise z_0 to t = 1
//         acc  += Up(f_i * residual_scale_i, h_N)
//         prior = Down(acc, h_{i+1})
//     image = D(acc)
//
// Every tensor operation is the ATen call that the Python code makes, in the same order and dtype,
// so the same engines give the same numbers. Functions here are pure (no I/O); Clock only measures.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine.h"
#include "manifest.h"

namespace msf {

// ---- the plan: steps, CFG and solver per scale ------------------------------------------------
struct Plan {
  std::vector<int> steps;   // per stage
  std::vector<double> cfg;  // per stage; 1 = no guidance (one forward per step)
  std::string solver = "euler";
  double shift = 1.0;
};

std::vector<int> default_steps(size_t num_stages);   // 100 then 50 per residual stage; a DiT 100
std::vector<double> default_cfg(size_t num_stages);  // 1.4 then 1.0; a DiT 1.5
// Check a plan against the cascade (nullopt -> the defaults); MsfError with msf-run's words.
Plan make_plan(const std::vector<StageConfig>& cfgs, const std::optional<std::vector<long>>& steps,
               const std::optional<std::vector<double>>& cfg, const std::string& solver, double shift);
void check_classes(const std::vector<StageConfig>& cfgs, const std::vector<long>& class_ids);

// ---- noise, time grid, Up/Down --------------------------------------------------------------------
// z_0 of every stage, (B, C, h_i, w_i) float32 each: image j draws from its own CPU generator seeded
// seeds[j], stage 0's noise first, then stage 1's (runtime.sampler.make_noise).
std::vector<at::Tensor> make_noise(const std::vector<StageConfig>& cfgs, const std::vector<uint64_t>& seeds,
                                   c10::Device device);
// steps + 1 times from 0 (noise) to 1 (data), SD3 shift in this time direction (flow.time_grid).
at::Tensor time_grid(int steps, double shift, c10::Device device);
std::vector<at::Tensor> time_grids(const Plan& plan, c10::Device device);
// (B, C, h, w) -> (B, C, size, size), factorize.resize: the identity at the same size.
at::Tensor resize(const at::Tensor& x, int size);

// Wait for the device's queued work (a no-op on the CPU).
void synchronize(c10::Device device);

// Run each ATen op the sampler uses once on tiny tensors: their one-time set-up (kernel dispatch,
// the generator, the upsample kernel) then happens while loading, as Python's does at import, and
// the sampling time holds the sampling only.
void warm_up_ops(const std::vector<StageConfig>& cfgs, c10::Device device);

// ---- timing -----------------------------------------------------------------------------------------
struct StageTiming {
  std::string name, detail;
  double wall_s = 0, engine_s = 0;
  long calls = 0;
};

// Times stages and engine calls; on CUDA it synchronises around each call so engine time is real.
class Clock {
 public:
  explicit Clock(c10::Device device) : device_(device) {}
  class Scope {  // RAII: adds the wall time of its lifetime to one stage's record
   public:
    Scope(Clock& clock, size_t index);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    Clock& clock_;
    size_t index_;
    long outer_;
    std::chrono::steady_clock::time_point t0_;
  };
  // The index of stage `name`'s record (created on first use); time it with Scope(clock, index).
  size_t record(const std::string& name, const std::string& detail);
  Tensors call(Engine& engine, const Tensors& feeds);
  void sync() const;
  // Records with "decode" last, as runtime.sampler.sample sorts them.
  std::vector<StageTiming> records() const;

 private:
  c10::Device device_;
  std::vector<StageTiming> records_;
  long current_ = -1;
};

// ---- Algorithm 3 ------------------------------------------------------------------------------------
struct Stage {
  StageConfig cfg;
  Engine* engine;
};

struct CascadeOutput {
  at::Tensor latent;                // (B, C, h_N, w_N), the accumulated f-hat
  at::Tensor image;                 // (B, 3, H, W) in [-1, 1]
  std::vector<at::Tensor> scales;   // decoded accumulation after each scale (--save-scales)
};

// Algorithm 3 on prepared tensors: only device work, no host sync and no value-dependent
// allocation, so the CUDA build can capture this very function in one graph. clock may be null.
CascadeOutput run_cascade(const std::vector<Stage>& stages, Engine& decoder, const at::Tensor& y,
                          const std::vector<at::Tensor>& noises, const std::vector<at::Tensor>& grids,
                          const Plan& plan, bool save_scales, Clock* clock);

}  // namespace msf
