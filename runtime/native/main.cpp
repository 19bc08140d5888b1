// msf-run-native: Algorithm 3 over an `msf-export --engine aoti` folder, without Python.
//
// The same flags, checks, images and stderr timing lines as `msf-run --backend aoti`
// (runtime/cli.py); see docs/NATIVE.md. Cheap checks (flags, lists, the output path, the manifest
// and its hashes, the device, the plan, classes and batch range) all run before any package is
// loaded; every error is one "Error: ..." line on stderr and a non-zero exit, and no PNG is left
// half-written (png.cpp writes to a temporary file and renames it).
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/core/InferenceMode.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/Exception.h>
#include <sys/resource.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <memory>

#include "cli.h"
#include "cuda_graph.h"
#include "engine.h"
#include "error.h"
#include "manifest.h"
#include "png.h"
#include "sampler.h"

#ifndef MSF_TORCH_VERSION
#define MSF_TORCH_VERSION "unknown"
#endif

namespace msf {
namespace {

namespace fs = std::filesystem;
using steady = std::chrono::steady_clock;

double since(steady::time_point t0) { return std::chrono::duration<double>(steady::now() - t0).count(); }

bool cuda_available() {
  return c10::impl::hasDeviceGuardImpl(c10::DeviceType::CUDA) &&
         c10::impl::getDeviceGuardImpl(c10::DeviceType::CUDA)->deviceCount() > 0;
}

// runtime.engines.resolve_device: auto -> cuda when there is one, else cpu.
c10::Device resolve_device(const std::string& device) {
  if (device == "auto") return cuda_available() ? c10::Device(c10::kCUDA, 0) : c10::Device(c10::kCPU);
  if (device == "cuda") {
#ifndef MSF_WITH_CUDA
    throw MsfError("--device cuda but this msf-run-native was built without CUDA (libtorch " MSF_TORCH_VERSION
                   "); use --device cpu, or rebuild with -DMSF_WITH_CUDA=ON against a CUDA libtorch");
#endif
    if (!cuda_available())
      throw MsfError("--device cuda but this torch (" MSF_TORCH_VERSION ") sees no CUDA GPU; use --device cpu");
    return c10::Device(c10::kCUDA, 0);
  }
  return c10::Device(c10::kCPU);
}

std::string fixed3(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.3f", v);
  return buf;
}

// The class ids as a (B,) int64 tensor on the device.
at::Tensor class_tensor(const std::vector<long>& ids, c10::Device dev) {
  at::Tensor y = at::empty({static_cast<int64_t>(ids.size())}, at::TensorOptions().dtype(at::kLong));
  std::copy(ids.begin(), ids.end(), y.data_ptr<int64_t>());
  return y.to(dev);
}

// What the run measured: runtime.sampler.SampleResult's timings and total.
struct Timed {
  CascadeOutput out;
  std::vector<StageTiming> records;
  double total_s = 0;
};

Timed sample_eager(const std::vector<Stage>& stages, Engine& decoder, const std::vector<long>& y_list,
                   const std::vector<uint64_t>& seeds, const Plan& plan, bool save_scales, c10::Device dev) {
  const auto cfgs = [&] {
    std::vector<StageConfig> c;
    for (const auto& s : stages) c.push_back(s.cfg);
    return c;
  }();
  Clock clock(dev);
  const auto t0 = steady::now();
  std::vector<at::Tensor> noises = make_noise(cfgs, seeds, dev);
  at::Tensor y = class_tensor(y_list, dev);  // (B,)
  Timed r;
  r.out = run_cascade(stages, decoder, y, noises, time_grids(plan, dev), plan, save_scales, &clock);
  clock.sync();
  r.total_s = since(t0);
  r.records = clock.records();
  return r;
}

int run(int argc, char** argv) {
  const Options o = Options::parse(argc, argv);
  if (o.help) {
    std::cout << help_text();
    return 0;
  }
  PngWriter::check_output(o.out);
  if (!o.model)
    throw MsfError("--model is required: give an artifact folder from msf-export --engine aoti "
                   "(msf-run-native runs AOTInductor exports only)");
  if (!fs::is_directory(*o.model)) throw MsfError("model folder not found: " + o.model->string());
  const c10::Device dev = resolve_device(o.device);
  const std::string dev_type = dev.is_cuda() ? "cuda" : "cpu";
  if (o.backend && *o.backend != "aoti")
    throw MsfError("msf-run-native runs AOTInductor artifacts (--backend aoti); use msf-run for --backend " + *o.backend);
  if (o.compile || o.dtype != "fp32")
    throw MsfError("--dtype and --compile apply to the torch backend; a aoti artifact's precision is set by msf-export");

  // Everything that can be checked without loading a package, in msf-run's order.
  const Manifest manifest = Manifest::open(*o.model, "aoti");
  manifest.check_device(dev_type);
  const std::vector<StageConfig> cfgs = manifest.configs();
  check_cascade(cfgs);
  const Plan plan = make_plan(cfgs, o.steps, o.cfg, o.solver, o.shift);
  check_classes(cfgs, o.classes);
  // The batch range first, so an absurd --batch is refused before anything is allocated for it.
  if (o.batch > (1L << 30)) manifest.check_batch(manifest.stages().front(), o.batch);  // far past any export
  const long B = static_cast<long>(o.classes.size()) * o.batch;
  for (size_t i = 0; i < cfgs.size(); ++i)  // CFG doubles the batch a denoiser sees
    manifest.check_batch(manifest.stages()[i], plan.cfg[i] == 1.0 ? B : 2 * B);
  manifest.check_batch(manifest.decoder(), std::min<long>(B, manifest.decoder().batch.max));  // it chunks above
  std::vector<long> y;  // class-major: one grid row per class
  for (long c : o.classes)
    for (long j = 0; j < o.batch; ++j) y.push_back(c);
  std::vector<uint64_t> seeds;
  for (long j = 0; j < B; ++j) {
    if (o.seed > UINT64_MAX - static_cast<uint64_t>(j)) throw MsfError("--seed is too large: seed + image index must fit 64 bits");
    seeds.push_back(o.seed + static_cast<uint64_t>(j));
  }

  c10::InferenceMode inference;
  const auto t_load = steady::now();
  std::vector<std::unique_ptr<Engine>> engines;
  std::vector<Stage> stages;
  for (size_t i = 0; i < cfgs.size(); ++i) {
    engines.push_back(std::make_unique<AotiEngine>(manifest, manifest.stages()[i], dev));
    stages.push_back({cfgs[i], engines.back().get()});
  }
  AotiEngine decoder(manifest, manifest.decoder(), dev);
  warm_up_ops(cfgs, dev);
  const double load_s = since(t_load);

  bool use_graph = o.cuda_graph.value_or(dev.is_cuda());
  if (use_graph && !dev.is_cuda()) {
    std::cerr << "note: --cuda-graph needs --device cuda; running eager\n";
    use_graph = false;
  }
  Timed result;
  std::string prefix = "[aoti " + dev_type;
  double capture_s = -1;
#ifdef MSF_WITH_CUDA
  std::unique_ptr<CascadeGraph> graph;
  if (use_graph) {
    const auto t0 = steady::now();
    try {
      graph = std::make_unique<CascadeGraph>(stages, decoder, B, plan, o.save_scales);
    } catch (const std::exception& e) {  // any capture failure means: run eager, and say why
      std::string why = e.what();
      why = why.substr(0, why.find('\n'));
      std::cerr << "note: CUDA graph off, running eager: capture failed (" << why << ")\n";
      graph.reset();
    }
    capture_s = since(t0);
  }
  if (graph) {
    prefix += " graph";
    synchronize(dev);
    const auto t0 = steady::now();
    std::vector<at::Tensor> noises = make_noise(cfgs, seeds, dev);
    at::Tensor yt = class_tensor(y, dev);
    const auto t1 = steady::now();
    result.out = graph->replay(yt, noises);
    synchronize(dev);
    const double replay_s = since(t1);
    result.records.push_back({"cascade", "one CUDA graph: " + std::to_string(stages.size()) +
                                             " scale(s) + decode, batch " + std::to_string(B),
                              replay_s, replay_s, 1});
    result.total_s = since(t0);
  } else {
    result = sample_eager(stages, decoder, y, seeds, plan, o.save_scales, dev);
  }
#else
  result = sample_eager(stages, decoder, y, seeds, plan, o.save_scales, dev);
#endif
  prefix += "]";

  const long ncol = o.classes.size() > 1 ? o.batch : static_cast<long>(std::ceil(std::sqrt(static_cast<double>(B))));
  PngWriter::write(o.out, to_grid(result.out.image, ncol));
  std::string written = o.out.string();
  if (o.save_scales) {
    for (size_t i = 0; i < result.out.scales.size(); ++i) {
      PngWriter::write(scale_path(o.out, i), to_grid(result.out.scales[i], ncol));
      written += ", " + scale_path(o.out, i).string();
    }
  }

  double engine_s = 0;
  for (const auto& r : result.records) {
    std::cerr << prefix << " " << r.name << " (" << r.detail << "): " << fixed3(r.wall_s) << " s, " << r.calls
              << " engine calls " << fixed3(r.engine_s) << " s\n";
    engine_s += r.engine_s;
  }
  const double overhead = engine_s > 0 ? result.total_s / engine_s : NAN;
  std::cerr << prefix << " total: " << fixed3(result.total_s) << " s for " << B << " image(s); engine calls "
            << fixed3(engine_s) << " s; overhead x" << fixed3(overhead) << "\n";
  if (capture_s >= 0 && prefix.find("graph") != std::string::npos)
    std::cerr << prefix << " graph capture (once per batch size and plan): " << fixed3(capture_s) << " s\n";
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  std::string memory = std::to_string(usage.ru_maxrss / 1024) + " MiB host (max RSS)";
#ifdef MSF_WITH_CUDA
  if (dev.is_cuda()) memory += ", " + std::to_string(cuda_peak_bytes(dev) >> 20) + " MiB CUDA (allocator peak)";
#endif
  std::cerr << prefix << " peak memory: " << memory << "; packages loaded in " << fixed3(load_s) << " s\n";
  const auto H = result.out.image.size(-2), W = result.out.image.size(-1);
  std::cout << "wrote " << written << " (" << B << " image(s) of " << W << "x" << H << ", seed " << o.seed << ")\n";
  return 0;
}

// One line, whatever the exception carried (c10 errors add a backtrace after a newline).
std::string first_line(const std::string& text) {
  std::string s = text.substr(0, text.find('\n'));
  return s.empty() ? "unknown error" : s;
}

}  // namespace
}  // namespace msf

int main(int argc, char** argv) {
  try {
    return msf::run(argc, argv);
  } catch (const msf::MsfError& e) {
    std::cerr << "Error: " << msf::first_line(e.what()) << "\n";
    return e.exit_code();
  } catch (const c10::Error& e) {
    std::cerr << "Error: " << msf::first_line(e.what_without_backtrace()) << "\n";
  } catch (const std::exception& e) {
    std::cerr << "Error: " << msf::first_line(e.what()) << "\n";
  }
  return 1;
}
