// Engine::run's checks and the AOTInductor backend (see engine.h; runtime/backend_aoti.py is the
// Python twin). A package holds compiled kernels for one device type: the manifest says which, and
// Manifest::check_device refuses a mismatch before any package is opened.
#include <ATen/ops/cat.h>
#include <torch/csrc/inductor/aoti_package/model_package_loader.h>

#include <algorithm>
#include <sstream>

#include "engine.h"
#include "error.h"

namespace msf {

Tensors Engine::run(const Tensors& feeds) {
  const std::string& first = entry_.inputs.front().name;
  auto it = feeds.find(first);
  if (it == feeds.end()) throw MsfError(entry_.name + ": missing input " + first);
  const long batch = it->second.size(0);
  const long hi = entry_.batch.max;
  if (entry_.kind == "decoder" && batch > hi) {  // decoding is per image: go in chunks (export.DECODER_MAX_BATCH)
    std::map<std::string, std::vector<at::Tensor>> parts;
    for (long i = 0; i < batch; i += hi) {
      Tensors chunk;
      for (const auto& [name, t] : feeds) chunk[name] = t.narrow(0, i, std::min(hi, batch - i));
      for (auto& [name, t] : run_checked(chunk)) parts[name].push_back(t);
    }
    Tensors out;
    for (auto& [name, ts] : parts) out[name] = at::cat(ts);
    return out;
  }
  return run_checked(feeds);
}

Tensors Engine::run_checked(const Tensors& feeds) {
  std::vector<at::Tensor> inputs;
  for (const auto& spec : entry_.inputs) {
    auto it = feeds.find(spec.name);
    if (it == feeds.end()) throw MsfError(entry_.name + ": missing input " + spec.name);
    inputs.push_back(it->second);
  }
  manifest_.check_batch(entry_, inputs.front().size(0));
  std::vector<at::Tensor> outs = run_ordered(std::move(inputs));
  Tensors named;
  for (size_t i = 0; i < entry_.outputs.size() && i < outs.size(); ++i) named[entry_.outputs[i].name] = outs[i];
  return named;
}

AotiEngine::AotiEngine(const Manifest& manifest, const Entry& entry, c10::Device device)
    : Engine(manifest, entry, device) {
  const fs::path path = manifest.artifact(entry);
  try {
    const c10::DeviceIndex index = device.is_cuda() && device.has_index() ? device.index() : -1;
    loader_ = std::make_unique<torch::inductor::AOTIModelPackageLoader>(path.string(), "model", false, 1, index);
  } catch (const std::exception& e) {  // zip errors, missing shared objects, ABI mismatches
    std::string msg;
    std::istringstream words(e.what());
    for (std::string w; words >> w && msg.size() < 300;) msg += (msg.empty() ? "" : " ") + w;
    throw MsfError("cannot load " + path.string() + ": " + msg.substr(0, 300) +
                   "; the package is damaged or was built by another torch, re-export it");
  }
}

AotiEngine::~AotiEngine() = default;

std::vector<at::Tensor> AotiEngine::run_ordered(std::vector<at::Tensor> inputs) {
  for (auto& t : inputs) t = t.to(device_).contiguous();  // the compiled kernels assume dense inputs
  // nullptr stream: the loader runs on the current stream (CUDA) - the one a graph capture records.
  return loader_->run(inputs, nullptr);
}

}  // namespace msf
