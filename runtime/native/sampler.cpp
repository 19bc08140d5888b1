// Algorithm 3 (see sampler.h). Each function names the Python function it mirrors; the comments on
// tensor lines give shapes, and the arithmetic is written in Python's evaluation order on purpose.
#include "sampler.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/linspace.h>
#include <ATen/ops/randn.h>
#include <ATen/ops/rsub.h>
#include <ATen/ops/stack.h>
#include <ATen/ops/upsample_bilinear2d.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <algorithm>
#include <cmath>
#include <functional>

#include "error.h"
#include "pyfmt.h"

namespace msf {

// ---- the plan -----------------------------------------------------------------------------------------
std::vector<int> default_steps(size_t n) {
  std::vector<int> s{100};
  s.resize(n, 50);
  return s;
}

std::vector<double> default_cfg(size_t n) {
  if (n == 1) return {1.5};
  std::vector<double> w{1.4};
  w.resize(n, 1.0);
  return w;
}

Plan make_plan(const std::vector<StageConfig>& cfgs, const std::optional<std::vector<long>>& steps_in,
               const std::optional<std::vector<double>>& cfg_in, const std::string& solver, double shift) {
  const size_t n = cfgs.size();
  std::vector<long> steps;
  if (steps_in) {
    steps = *steps_in;
  } else {
    for (int s : default_steps(n)) steps.push_back(s);
  }
  const std::vector<double> cfg = cfg_in ? *cfg_in : default_cfg(n);
  std::vector<std::string> names, dsteps, dcfg;
  for (const auto& c : cfgs) names.push_back(c.name);
  for (int s : default_steps(n)) dsteps.push_back(std::to_string(s));
  for (double w : default_cfg(n)) dcfg.push_back(py::repr(w));
  const std::string stages = std::to_string(n) + " stage(s) (" + py::join(names, ", ") + ")";
  if (steps.size() != n)
    throw MsfError("--steps has " + std::to_string(steps.size()) + " value(s) but the cascade has " + stages +
                   ": give one per stage, e.g. --steps " + py::join(dsteps, ","));
  if (cfg.size() != n)
    throw MsfError("--cfg has " + std::to_string(cfg.size()) + " value(s) but the cascade has " + stages +
                   ": give one per stage, e.g. --cfg " + py::join(dcfg, ","));
  for (long s : steps) {
    if (s < 1) throw MsfError("steps must be whole numbers >= 1, got " + std::to_string(s));
    if (s > 1000000) throw MsfError("steps must be at most 1000000 per stage, got " + std::to_string(s));
  }
  for (double w : cfg)
    if (!std::isfinite(w) || w < 0)
      throw MsfError("CFG scales must be finite and >= 0 (1 = no guidance), got " + py::repr(w));
  if (solver != "euler" && solver != "heun")
    throw MsfError("unknown solver " + py::repr(solver) + "; use one of euler, heun");
  if (!std::isfinite(shift) || shift <= 0)
    throw MsfError("the time shift must be > 0 (1 = none), got " + py::repr(shift));
  Plan plan{{}, cfg, solver, shift};
  for (long s : steps) plan.steps.push_back(static_cast<int>(s));
  return plan;
}

void check_classes(const std::vector<StageConfig>& cfgs, const std::vector<long>& ids) {
  const int k = cfgs.front().num_classes;
  for (long c : ids) {
    if (c < 0)
      throw MsfError("class id " + std::to_string(c) + " is negative: this model has classes 0-" + std::to_string(k - 1));
    if (c >= k)
      throw MsfError("class id " + std::to_string(c) + " is out of range: this model has " + std::to_string(k) +
                     " classes (0-" + std::to_string(k - 1) + ")");
  }
}

// ---- noise, time grid, Up/Down ----------------------------------------------------------------------
std::vector<at::Tensor> make_noise(const std::vector<StageConfig>& cfgs, const std::vector<uint64_t>& seeds,
                                   c10::Device device) {
  std::vector<std::vector<at::Tensor>> per_stage(cfgs.size());
  for (uint64_t s : seeds) {
    // torch.Generator().manual_seed(s): a fresh mt19937 seeded s, no cached normal sample.
    at::Generator g = at::make_generator<at::CPUGeneratorImpl>(s);
    for (size_t i = 0; i < cfgs.size(); ++i) {
      const auto& c = cfgs[i];
      per_stage[i].push_back(at::randn({c.in_channels, c.latent_size, c.latent_size}, g));  // (C, h_i, w_i)
    }
  }
  std::vector<at::Tensor> out;
  for (auto& zs : per_stage) out.push_back(at::stack(zs).to(device));  // (B, C, h_i, w_i)
  return out;
}

at::Tensor time_grid(int steps, double shift, c10::Device device) {
  if (steps < 1) throw MsfError("steps must be >= 1, got " + std::to_string(steps));
  at::Tensor t = at::linspace(0.0, 1.0, steps + 1, at::TensorOptions().dtype(at::kDouble).device(device));
  at::Tensor s = at::rsub(t, 1);                            // s = 1 - t, the noise level
  s = s.mul(shift).div(s.mul(shift - 1).add(1));            // shift * s / (1 + (shift - 1) * s)
  return at::rsub(s, 1).to(at::kFloat);                     // (steps + 1,)
}

std::vector<at::Tensor> time_grids(const Plan& plan, c10::Device device) {
  std::vector<at::Tensor> out;
  for (int s : plan.steps) out.push_back(time_grid(s, plan.shift, device));
  return out;
}

at::Tensor resize(const at::Tensor& x, int size) {
  if (x.size(-2) == size && x.size(-1) == size) return x;
  return at::upsample_bilinear2d(x, {size, size}, /*align_corners=*/false, std::nullopt, std::nullopt);
}

void warm_up_ops(const std::vector<StageConfig>& cfgs, c10::Device device) {
  const std::vector<at::Tensor> z = make_noise(cfgs, {0, 1}, device);  // (2, C, h_i, w_i)
  const at::Tensor ts = time_grid(2, 2.0, device);
  at::Tensor x = z.front().add(ts[1].sub(ts[0]).mul(z.front()));
  x = at::cat({x, x}).narrow(0, 0, 2).mul(1.5);
  resize(x, cfgs.back().latent_size + 1);
}

// ---- timing -----------------------------------------------------------------------------------------------
namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void synchronize(c10::Device device) {
  if (device.is_cuda())  // through c10's device registry: no CUDA headers needed to compile this
    c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->synchronizeDevice(device.index() < 0 ? 0 : device.index());
}

void Clock::sync() const { synchronize(device_); }

Clock::Scope::Scope(Clock& clock, size_t index) : clock_(clock), index_(index), outer_(clock.current_) {
  clock_.current_ = static_cast<long>(index);
  clock_.sync();
  t0_ = std::chrono::steady_clock::now();
}

Clock::Scope::~Scope() {
  clock_.sync();
  clock_.records_[index_].wall_s += seconds_since(t0_);
  clock_.current_ = outer_;
}

size_t Clock::record(const std::string& name, const std::string& detail) {
  auto it = std::find_if(records_.begin(), records_.end(), [&](const StageTiming& r) { return r.name == name; });
  if (it != records_.end()) return static_cast<size_t>(it - records_.begin());
  records_.push_back({name, detail});
  return records_.size() - 1;
}

Tensors Clock::call(Engine& engine, const Tensors& feeds) {
  sync();
  const auto t0 = std::chrono::steady_clock::now();
  Tensors out = engine.run(feeds);
  sync();
  if (current_ >= 0) {
    records_[current_].engine_s += seconds_since(t0);
    records_[current_].calls += 1;
  }
  return out;
}

std::vector<StageTiming> Clock::records() const {
  std::vector<StageTiming> r = records_;
  std::stable_sort(r.begin(), r.end(), [](const StageTiming& a, const StageTiming& b) {
    return (a.name != "decode") && (b.name == "decode");
  });
  return r;
}

// ---- Algorithm 3 ----------------------------------------------------------------------------------------
namespace {

using Velocity = std::function<at::Tensor(const at::Tensor& x, const at::Tensor& t)>;  // (B,C,h,w), (B,)

Tensors call(Clock* clock, Engine& engine, const Tensors& feeds) {
  return clock ? clock->call(engine, feeds) : engine.run(feeds);
}

// flow._tvec: the time k of the grid for every image of the batch, (B,).
at::Tensor tvec(const at::Tensor& x, const at::Tensor& t) { return t.to(at::kFloat).expand({x.size(0)}).contiguous(); }

// flow.sample_euler: x <- x + (t_{k+1} - t_k) v(x, t_k); one velocity call per step (Eq. 6).
at::Tensor sample_euler(const Velocity& velocity, at::Tensor x, const at::Tensor& ts) {
  for (int64_t k = 0; k + 1 < ts.size(0); ++k) x = x.add(ts[k + 1].sub(ts[k]).mul(velocity(x, tvec(x, ts[k]))));
  return x;
}

// flow.sample_heun: Euler predictor, trapezoidal corrector; two velocity calls per step.
at::Tensor sample_heun(const Velocity& velocity, at::Tensor x, const at::Tensor& ts) {
  for (int64_t k = 0; k + 1 < ts.size(0); ++k) {
    at::Tensor dt = ts[k + 1].sub(ts[k]);
    at::Tensor v0 = velocity(x, tvec(x, ts[k]));
    at::Tensor x_pred = x.add(dt.mul(v0));
    at::Tensor v1 = velocity(x_pred, tvec(x, ts[k + 1]));
    x = x.add(dt.mul(0.5).mul(v0.add(v1)));  // x + dt * 0.5 * (v0 + v1)
  }
  return x;
}

// runtime.sampler.engine_model wrapped by flow.guided: Eq. 7 on all channels; w == 1 is the bare
// model (one forward per step, no doubled batch), otherwise [y, null] as one doubled batch.
Velocity guided(Engine& engine, Clock* clock, double w, int null_class, const at::Tensor& y,
                const std::optional<at::Tensor>& prior) {
  auto model = [&engine, clock](const at::Tensor& x, const at::Tensor& t, const at::Tensor& yy,
                                const std::optional<at::Tensor>& p) {
    Tensors feeds{{"x", x}, {"t", t}, {"y", yy}};
    if (p) feeds["prior"] = *p;
    return call(clock, engine, feeds).at("v");  // (B, C, h, w)
  };
  if (w == 1.0) return [=](const at::Tensor& x, const at::Tensor& t) { return model(x, t, y, prior); };
  at::Tensor y2 = at::cat({y, at::full_like(y, null_class)});  // (2B,)
  std::optional<at::Tensor> p2;
  if (prior) p2 = at::cat({*prior, *prior});  // (2B, C, h, w)
  return [=](const at::Tensor& x, const at::Tensor& t) {
    const int64_t B = x.size(0);
    at::Tensor v = model(at::cat({x, x}), at::cat({t, t}), y2, p2);  // (2B, C, h, w)
    at::Tensor v_cond = v.narrow(0, 0, B), v_uncond = v.narrow(0, B, B);
    return v_uncond.add(v_cond.sub(v_uncond).mul(w));
  };
}

at::Tensor decode(Engine& decoder, const at::Tensor& latent, Clock* clock) {
  return call(clock, decoder, {{"latent", latent}}).at("image");  // (B, 3, H, W), Algorithm 3 line 14
}

// runtime.sampler._stage: time the enclosed block as stage `name`, or nothing when untimed.
class Timed {
 public:
  Timed(Clock* clock, const std::string& name, const std::string& detail) {
    if (clock) scope_.emplace(*clock, clock->record(name, detail));
  }

 private:
  std::optional<Clock::Scope> scope_;
};

at::Tensor timed_decode(Engine& decoder, const at::Tensor& latent, Clock* clock) {
  Timed t(clock, "decode", "VAE");
  return decode(decoder, latent, clock);
}

}  // namespace

CascadeOutput run_cascade(const std::vector<Stage>& stages, Engine& decoder, const at::Tensor& y,
                          const std::vector<at::Tensor>& noises, const std::vector<at::Tensor>& grids,
                          const Plan& plan, bool save_scales, Clock* clock) {
  const int full = stages.front().cfg.full_size();
  at::Tensor acc;
  std::optional<at::Tensor> prior;
  CascadeOutput out;
  for (size_t i = 0; i < stages.size(); ++i) {
    const StageConfig& cfg = stages[i].cfg;
    const std::string detail = cfg.name + " " + std::to_string(cfg.latent_size) + "x" + std::to_string(cfg.latent_size) +
                               ": " + std::to_string(plan.steps[i]) + " " + plan.solver + " steps, cfg " + py::g(plan.cfg[i]);
    {
      Timed timed(clock, "scale " + std::to_string(i), detail);
      Velocity velocity = guided(*stages[i].engine, clock, plan.cfg[i], cfg.null_class(), y, prior);
      at::Tensor f = plan.solver == "heun" ? sample_heun(velocity, noises[i], grids[i])
                                           : sample_euler(velocity, noises[i], grids[i]);  // (B, C, h_i, w_i)
      if (cfg.residual_scale != 1.0) f = f.mul(cfg.residual_scale);  // the model learned target / residual_scale
      at::Tensor u = resize(f, full);                                   // Up(f_i, h_N)
      acc = acc.defined() ? acc.add(u) : u;                             // (B, C, h_N, w_N), line 9
      if (i + 1 < stages.size()) prior = resize(acc, stages[i + 1].cfg.latent_size);  // Down, line 11
    }
    if (save_scales) out.scales.push_back(timed_decode(decoder, acc, clock));  // Figure 2c: scales 0..i
  }
  out.latent = acc;
  out.image = save_scales ? out.scales.back() : timed_decode(decoder, acc, clock);  // (B, 3, H, W)
  return out;
}

}  // namespace msf
