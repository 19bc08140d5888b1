// Reading and checking manifest.json (see manifest.h). Every message below is the Python runtime's
// (msf_export/manifest.py, msf_train/config.py, msf_train/checkpoint.py, runtime/backend_aoti.py)
// word for word for the common refusals (msf_train/schema.py checks every field's type and range
// too; a wrongly typed field is refused here as well, in nlohmann-json's words).
#include "manifest.h"

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>

#include "error.h"
#include "pyfmt.h"

namespace msf {

using json = nlohmann::ordered_json;  // keeps the file order, so the first bad file is Python's first

namespace {

constexpr int kFormat = 1;
const std::vector<std::string> kEngines = {"onnx", "trt", "aoti"};
const std::string kForce = "re-export with msf-export --force";

// The optional "sampling" entry (msf_train.schema.sampling, same messages): one value per stage.
void read_sampling(const json& j, size_t n, const fs::path& path, std::optional<std::vector<long>>& steps,
                   std::optional<std::vector<double>>& cfg) {
  const std::string where = path.string() + ": field 'sampling.";
  if (!j.is_object())
    throw MsfError(path.string() + ": 'sampling' must be a JSON object; " + kForce);
  auto count = [&](const std::string& key, size_t got) {
    if (got != n)
      throw MsfError(where + key + "' has " + std::to_string(got) + " value(s) but there are " + std::to_string(n) +
                     " stage(s); " + kForce);
  };
  if (j.contains("steps")) {
    const json& s = j["steps"];
    if (!s.is_array()) throw MsfError(where + "steps' must be a list; " + kForce);
    if (s.empty()) throw MsfError(where + "steps' is empty; " + kForce);
    std::vector<long> v;
    for (const auto& x : s) {
      if (!x.is_number_integer() || x.get<long>() < 1)
        throw MsfError(where + "steps' must hold whole numbers >= 1, found " + x.dump() + "; " + kForce);
      v.push_back(x.get<long>());
    }
    count("steps", v.size());
    steps = v;
  }
  if (j.contains("cfg")) {
    const json& c = j["cfg"];
    if (!c.is_array()) throw MsfError(where + "cfg' must be a list; " + kForce);
    std::vector<double> v;
    for (const auto& x : c) {
      if (!x.is_number() || !std::isfinite(x.get<double>()) || x.get<double>() < 0)
        throw MsfError(where + "cfg' must hold finite numbers >= 0 (1 = no guidance), found " + x.dump() + "; " + kForce);
      v.push_back(x.get<double>());
    }
    count("cfg", v.size());
    cfg = v;
  }
}

// What Python's repr() prints for a JSON value (None for null or absent).
std::string value_repr(const json* v) {
  if (v == nullptr || v->is_null()) return "None";
  if (v->is_string()) return py::repr(v->get<std::string>());
  return v->dump();
}

// A field a well-formed manifest always has; its absence means the file is damaged
// (msf_train.schema.Fields.get's words; prefix: "", "stages[0].", "decoder.").
const json& need(const json& obj, const std::string& key, const fs::path& path, const std::string& prefix) {
  if (!obj.is_object() || !obj.contains(key))
    throw MsfError(path.string() + ": field '" + prefix + key + "' is missing; " + kForce);
  return obj.at(key);
}

TensorSpec read_spec(const json& j) {
  TensorSpec s{j.at("name").get<std::string>(), {}, j.at("dtype").get<std::string>()};
  for (const auto& d : j.at("shape")) s.shape.push_back(d.is_string() ? d.get<std::string>() : std::to_string(d.get<long>()));
  return s;
}

BatchRange read_batch(const json& j) {
  return {j.at("min").get<int>(), j.value("opt", j.at("min").get<int>()), j.at("max").get<int>()};
}

// The fields themselves (see read_config).
StageConfig read_config_fields(const json& d, const fs::path& path, const std::string& prefix) {
  static const std::set<std::string> known = {"name", "depth", "hidden_size", "num_heads", "patch_size",
                                              "latent_size", "in_channels", "has_prior", "num_classes",
                                              "mlp_ratio", "scale_index", "scale_sizes", "residual_scale",
                                              "parameterization", "time_freq_shift", "mlp_norm_eps"};
  std::vector<std::string> unknown;
  for (const auto& [k, _] : d.items())
    if (!known.count(k)) unknown.push_back(k);
  std::sort(unknown.begin(), unknown.end());
  if (!unknown.empty())
    throw MsfError(path.string() + ": '" + prefix.substr(0, prefix.size() - 1) + "' has unknown fields " + py::list(unknown) +
                   "; it was written by a newer msf: upgrade msf");
  StageConfig c;
  c.name = d.at("name").get<std::string>();
  const int hidden = d.at("hidden_size").get<int>(), heads = d.at("num_heads").get<int>();
  const int patch = d.value("patch_size", 2);
  c.latent_size = d.value("latent_size", 32);
  c.in_channels = d.value("in_channels", 4);
  c.num_classes = d.value("num_classes", 1000);
  c.scale_index = d.value("scale_index", 0);
  c.residual_scale = d.value("residual_scale", 1.0);
  c.scale_sizes = d.contains("scale_sizes") ? d.at("scale_sizes").get<std::vector<int>>() : std::vector<int>{c.latent_size};
  const bool has_prior = d.value("has_prior", false);
  if (heads <= 0 || hidden % heads)
    throw MsfError(c.name + ": hidden_size " + std::to_string(hidden) + " is not divisible by num_heads " + std::to_string(heads));
  if (patch <= 0 || c.latent_size % patch)
    throw MsfError(c.name + ": latent_size " + std::to_string(c.latent_size) + " is not divisible by patch_size " + std::to_string(patch));
  if (c.scale_index < 0 || c.scale_index >= static_cast<int>(c.scale_sizes.size()) ||
      c.scale_sizes[c.scale_index] != c.latent_size)
    throw MsfError(c.name + ": scale_sizes[" + std::to_string(c.scale_index) + "] must equal latent_size " +
                   std::to_string(c.latent_size));
  // What the network predicts is converted to a velocity inside the exported forward; only checked here.
  const std::string param = d.value("parameterization", std::string("velocity"));
  if (param != "velocity" && param != "eps-ddpm")
    throw MsfError(c.name + ": unknown parameterization " + py::repr(param) + "; use one of velocity, eps-ddpm");
  const int freq_shift = d.value("time_freq_shift", 0);
  if (freq_shift != 0 && freq_shift != 1)
    throw MsfError(c.name + ": time_freq_shift must be 0 (DiT) or 1 (diffusers), got " + std::to_string(freq_shift));
  if (has_prior != (c.scale_index > 0))
    throw MsfError(c.name + ": scale " + std::to_string(c.scale_index) + " must " + (c.scale_index ? "" : "not ") +
                   "take a prior");
  if (c.latent_size < 1 || c.in_channels < 1 || c.num_classes < 1)
    throw MsfError(c.name + ": latent_size, in_channels and num_classes must be >= 1");
  return c;
}

// msf_train.schema.model_config + ModelConfig.__post_init__: the same refusals, the same words.
StageConfig read_config(const json& d, const fs::path& path, const std::string& prefix) {
  try {
    return read_config_fields(d, path, prefix);
  } catch (const MsfError& e) {
    const std::string m = e.what();
    if (m.rfind(path.string() + ":", 0) == 0) throw;
    throw MsfError(path.string() + ": " + m + "; " + kForce);
  }
}

Entry read_entry(const json& j, const fs::path& path, const std::string& where, const BatchRange& fallback) {
  Entry e;
  for (const char* key : {"name", "files", "artifact", "inputs", "outputs", "kind"}) need(j, key, path, where);
  e.name = j.at("name").get<std::string>();
  e.kind = j.at("kind").get<std::string>();
  e.artifact = j.at("artifact").get<std::string>();
  for (const auto& [name, digest] : j.at("files").items()) e.files.emplace_back(name, digest.get<std::string>());
  for (const auto& s : j.at("inputs")) e.inputs.push_back(read_spec(s));
  for (const auto& s : j.at("outputs")) e.outputs.push_back(read_spec(s));
  if (e.inputs.empty() || e.outputs.empty())
    throw MsfError(path.string() + ": field '" + where + (e.inputs.empty() ? "inputs" : "outputs") + "' is empty; " + kForce);
  e.batch = j.contains("batch") ? read_batch(j.at("batch")) : fallback;
  return e;
}

// Python's json.loads message is "Expecting value: line 1 column 1 (char 0)"; nlohmann's says the
// same in its own words after a "[json.exception...] " tag, which is noise here.
std::string json_reason(const std::exception& e) {
  std::string w = e.what();
  auto p = w.find("] ");
  return p == std::string::npos ? w : w.substr(p + 2);
}

}  // namespace

std::string sha256_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw MsfError("cannot read " + path.string());
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1) throw MsfError("OpenSSL cannot hash (sha256)");
  std::vector<char> buf(1 << 20);
  while (in) {
    in.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (in.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(in.gcount()));
  }
  if (in.bad()) throw MsfError("cannot read " + path.string());
  std::array<unsigned char, EVP_MAX_MD_SIZE> md{};
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx.get(), md.data(), &n);
  static const char* hex = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out += hex[md[i] >> 4];
    out += hex[md[i] & 15];
  }
  return out;
}

Manifest Manifest::open(const fs::path& folder_in, const std::string& engine) {
  Manifest m;
  // Path("art/") prints as "art" in Python; strip a trailing separator so the messages agree.
  std::string f = folder_in.string();
  while (f.size() > 1 && f.back() == '/') f.pop_back();
  m.folder_ = f;
  const fs::path& folder = m.folder_;
  if (!fs::is_directory(folder)) throw MsfError("artifact folder not found: " + folder.string());
  const fs::path path = m.path();
  if (!fs::is_regular_file(path))
    throw MsfError(folder.string() + " has no manifest.json: not an msf-export folder (make one with msf-export)");
  json j;
  try {
    std::ifstream in(path);
    j = json::parse(in);
  } catch (const json::exception& e) {
    throw MsfError("artifact manifest " + path.string() + " is not valid JSON (" + json_reason(e) + "); re-create it");
  }
  if (!j.is_object() || !j.contains("kind") || j["kind"] != "msf-export")
    throw MsfError(path.string() + " is not an msf-export manifest");
  if (!j.contains("format") || !j["format"].is_number_integer())
    throw MsfError(path.string() + " has no valid format number; " + kForce);
  const long fmt = j["format"].get<long>();
  if (fmt > kFormat)
    throw MsfError(path.string() + " has format " + std::to_string(fmt) + ", newer than this msf reads (" +
                   std::to_string(kFormat) + "): upgrade msf");
  const json* eng = j.contains("engine") ? &j["engine"] : nullptr;
  if (!eng || !eng->is_string() ||
      std::find(kEngines.begin(), kEngines.end(), eng->get<std::string>()) == kEngines.end())
    throw MsfError(path.string() + " names unknown engine " + value_repr(eng) + "; known: " + py::join(kEngines, ", "));
  m.engine_ = eng->get<std::string>();
  if (m.engine_ != engine)
    throw MsfError(folder.string() + " holds a " + m.engine_ + " export, not " + engine + ": run it with msf-run --backend " +
                   m.engine_ + " or re-export with msf-export --engine " + engine);
  for (const char* key : {"precision", "batch", "stages", "decoder"}) need(j, key, path, "");
  try {
    m.precision_ = j["precision"].get<std::string>();
    m.device_ = j.value("device", std::string("cpu"));
    if (j.contains("tools") && j["tools"].is_object() && j["tools"].contains("torch") && j["tools"]["torch"].is_string())
      m.torch_ = j["tools"]["torch"].get<std::string>();
    m.batch_ = read_batch(j["batch"]);
    const json& stages = j["stages"];
    if (!stages.is_array() || stages.empty())
      throw MsfError(path.string() + ": field 'stages' lists no stages; " + kForce);
    for (size_t i = 0; i < stages.size(); ++i)
      m.stages_.push_back(read_entry(stages[i], path, "stages[" + std::to_string(i) + "].", m.batch_));
    m.decoder_ = read_entry(j["decoder"], path, "decoder.", m.batch_);
    if (j.contains("sampling")) read_sampling(j["sampling"], m.stages_.size(), path, m.plan_steps_, m.plan_cfg_);
  } catch (const json::exception& e) {
    throw MsfError(path.string() + " is damaged (" + json_reason(e) + "): " + kForce);
  }
  m.verify_files();
  // Configs are read after the hashes, as Python does (load_artifacts: open_export, then stage_config).
  try {
    for (size_t i = 0; i < m.stages_.size(); ++i)
      m.stages_[i].config = read_config(need(j["stages"][i], "config", path, "stages[" + std::to_string(i) + "]."), path,
                                        "stages[" + std::to_string(i) + "].config.");
  } catch (const json::exception& e) {
    throw MsfError(path.string() + " has a damaged stage config (" + json_reason(e) + "): " + kForce);
  }
  return m;
}

void Manifest::verify_files() const {
  std::vector<const Entry*> all;
  for (const auto& e : stages_) all.push_back(&e);
  all.push_back(&decoder_);
  for (const Entry* e : all) {
    for (const auto& [name, digest] : e->files) {
      const fs::path p = folder_ / name;
      if (!fs::is_regular_file(p))
        throw MsfError(p.string() + " is missing (listed in " + path().string() + "); " + kForce);
      const std::string got = sha256_file(p);
      if (got != digest)
        throw MsfError(p.string() + " does not match its manifest (sha256 " + got.substr(0, 12) + "... != " +
                       digest.substr(0, 12) + "...): the file changed or is damaged; " + kForce);
    }
  }
}

void Manifest::check_batch(const Entry& entry, long batch) const {
  const BatchRange& r = entry.batch;
  if (batch < r.min || batch > r.max)
    throw MsfError("batch " + std::to_string(batch) + " is outside the exported range " + std::to_string(r.min) + ".." +
                   std::to_string(r.max) + " of " + entry.name +
                   " (classifier-free guidance doubles the batch): re-export with --max-batch " +
                   std::to_string(std::max<long>(batch, r.max)));
}

void Manifest::check_device(const std::string& device) const {
  if (device_ != device)
    throw MsfError(artifact(stages_.front()).string() + " was compiled for " + device_ + ", not " + device +
                   ": run it with --device " + device_ + " or re-export with msf-export --engine aoti --device " + device);
}

void Manifest::check_torch(const std::string& libtorch) const {
  // The wheel says "2.13.0+cpu", libtorch's CMake package "2.13.0": compare the release, not the build tag
  // (the device check has already matched CPU and CUDA packages).
  const std::string recorded = torch_.substr(0, torch_.find('+'));
  if (!recorded.empty() && recorded != libtorch)
    throw MsfError(artifact(stages_.front()).string() + " was compiled by torch " + torch_ + ", this is torch " + libtorch +
                   ": AOTInductor packages run only on the torch that built them; re-export with msf-export --engine aoti --force");
}

std::vector<StageConfig> Manifest::configs() const {
  std::vector<StageConfig> out;
  for (const auto& e : stages_) out.push_back(*e.config);
  return out;
}

void check_cascade(const std::vector<StageConfig>& cfgs) {
  const StageConfig& first = cfgs.front();
  for (size_t i = 0; i < cfgs.size(); ++i) {
    const StageConfig& c = cfgs[i];
    if (c.num_classes != first.num_classes)
      throw MsfError("stages disagree on classes: " + first.name + " has " + std::to_string(first.num_classes) + ", " +
                     c.name + " has " + std::to_string(c.num_classes));
    if (c.in_channels != first.in_channels)
      throw MsfError("stages disagree on latent channels: " + first.name + " " + std::to_string(first.in_channels) +
                     ", " + c.name + " " + std::to_string(c.in_channels));
    if (c.scale_sizes != first.scale_sizes)
      throw MsfError("stages disagree on latent shape: " + first.name + " scales " + py::tuple(first.scale_sizes) +
                     ", " + c.name + " " + py::tuple(c.scale_sizes));
    if (c.scale_index != static_cast<int>(i))
      throw MsfError("stage " + std::to_string(i) + " (" + c.name + ") is scale " + std::to_string(c.scale_index) +
                     ": list the stages in scale order");
  }
  if (cfgs.size() != first.scale_sizes.size())
    throw MsfError("the cascade has " + std::to_string(cfgs.size()) + " stages but its presets describe " +
                   std::to_string(first.scale_sizes.size()) + " scales");
}

}  // namespace msf
