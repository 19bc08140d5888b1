// Parsing msf-run-native's flags (see cli.h). The option set and every default is msf-run's.
#include "cli.h"

#include <cerrno>
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <functional>
#include <map>

#include "error.h"
#include "pyfmt.h"

namespace msf {

namespace {

std::string strip(const std::string& s) {
  const auto a = s.find_first_not_of(" \t\n\r\f\v");
  if (a == std::string::npos) return "";
  return s.substr(a, s.find_last_not_of(" \t\n\r\f\v") - a + 1);
}

// Python's int(text) for plain decimal text (sign allowed, surrounding blanks ignored).
std::optional<long> to_int(const std::string& text) {
  const std::string s = strip(text);
  if (s.empty()) return std::nullopt;
  size_t i = (s[0] == '+' || s[0] == '-') ? 1 : 0;
  if (i == s.size()) return std::nullopt;
  for (size_t k = i; k < s.size(); ++k)
    if (s[k] < '0' || s[k] > '9') return std::nullopt;
  errno = 0;
  const long v = std::strtol(s.c_str(), nullptr, 10);
  if (errno == ERANGE) return std::nullopt;
  return v;
}

// Python's float(text): decimal or exponent notation, inf and nan.
std::optional<double> to_float(const std::string& text) {
  const std::string s = strip(text);
  if (s.empty() || s.find_first_of("xXpP") != std::string::npos) return std::nullopt;  // no hex floats
  char* end = nullptr;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size()) return std::nullopt;
  return v;
}

// runtime.cli.parse_list: "100,50" -> [100, 50].
template <class T>
std::vector<T> parse_list(const std::string& text, const std::string& option,
                          const std::function<std::optional<T>(const std::string&)>& conv, const char* what) {
  std::vector<T> out;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    const std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const auto v = strip(item).empty() ? std::nullopt : conv(item);
    if (!v) throw MsfError(option + " takes comma-separated " + what + ", got " + py::repr(text));
    out.push_back(*v);
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return out;
}

std::string choice(const std::string& option, const std::string& value, const std::vector<std::string>& choices) {
  for (const auto& c : choices)
    if (c == value) return value;
  std::vector<std::string> quoted;
  for (const auto& c : choices) quoted.push_back(py::repr(c));
  throw UsageError("Invalid value for '" + option + "': " + py::repr(value) + " is not one of " + py::join(quoted, ", ") + ".");
}

long int_at_least(const std::string& option, const std::string& value, long lo) {
  const auto v = to_int(value);
  if (!v) throw UsageError("Invalid value for '" + option + "': " + py::repr(value) + " is not a valid integer.");
  if (*v < lo)
    throw UsageError("Invalid value for '" + option + "': " + std::to_string(*v) + " is not in the range x>=" +
                     std::to_string(lo) + ".");
  return *v;
}

}  // namespace

Options Options::parse(int argc, char** argv) {
  Options o;
  std::optional<std::string> class_text, steps_text, cfg_text;
  // Flags that take a value, and what to do with it.
  const std::map<std::string, std::function<void(const std::string&)>> valued = {
      {"--class", [&](const std::string& v) { class_text = v; }},
      {"--seed", [&](const std::string& v) { o.seed = static_cast<uint64_t>(int_at_least("--seed", v, 0)); }},
      {"--batch", [&](const std::string& v) { o.batch = int_at_least("--batch", v, 1); }},
      {"--steps", [&](const std::string& v) { steps_text = v; }},
      {"--cfg", [&](const std::string& v) { cfg_text = v; }},
      {"--solver", [&](const std::string& v) { o.solver = choice("--solver", v, {"euler", "heun"}); }},
      {"--shift",
       [&](const std::string& v) {
         const auto f = to_float(v);
         if (!f) throw UsageError("Invalid value for '--shift': " + py::repr(v) + " is not a valid float.");
         o.shift = *f;
       }},
      {"--model", [&](const std::string& v) { o.model = v; }},
      {"--backend", [&](const std::string& v) { o.backend = choice("--backend", v, {"torch", "onnx", "aoti", "trt"}); }},
      {"--device", [&](const std::string& v) { o.device = choice("--device", v, {"auto", "cpu", "cuda"}); }},
      {"--dtype", [&](const std::string& v) { o.dtype = choice("--dtype", v, {"fp32", "bf16", "fp16"}); }},
      {"--out", [&](const std::string& v) { o.out = v; }},
  };
  const std::map<std::string, std::function<void()>> flags = {
      {"--compile", [&] { o.compile = true; }},
      {"--cuda-graph", [&] { o.cuda_graph = true; }},
      {"--no-cuda-graph", [&] { o.cuda_graph = false; }},
      {"--save-scales", [&] { o.save_scales = true; }},
      {"--help", [&] { o.help = true; }},
      {"-h", [&] { o.help = true; }},
      {"--version", [&] { o.version = true; }},
  };
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    std::optional<std::string> inline_value;
    if (arg.rfind("--", 0) == 0 && arg.find('=') != std::string::npos) {  // --flag=value
      inline_value = arg.substr(arg.find('=') + 1);
      arg = arg.substr(0, arg.find('='));
    }
    if (auto f = flags.find(arg); f != flags.end() && !inline_value) {
      f->second();
      if (o.help || o.version) return o;  // eager, as click's --help and --version
      continue;
    }
    auto v = valued.find(arg);
    if (v == valued.end()) {
      if (arg.rfind("-", 0) == 0 && arg.size() > 1)
        throw UsageError("No such option: " + arg + " (msf-run-native --help lists the options)");
      throw UsageError("Got unexpected extra argument (" + arg + ")");
    }
    if (!inline_value) {
      if (i + 1 >= argc) throw UsageError("Option '" + arg + "' requires an argument.");
      inline_value = argv[++i];
    }
    v->second(*inline_value);
  }
  // runtime.cli.main's cheap checks, in its order, with its words.
  if (class_text) o.classes = parse_list<long>(*class_text, "--class", to_int, "whole numbers");
  if (steps_text) o.steps = parse_list<long>(*steps_text, "--steps", to_int, "whole numbers");
  if (cfg_text) o.cfg = parse_list<double>(*cfg_text, "--cfg", to_float, "numbers");
  if (o.steps) {
    for (long s : *o.steps)
      if (s < 1) throw MsfError("--steps must be >= 1 for every stage, got " + py::join(*o.steps, ","));
  }
  long lowest = 0;
  for (long c : o.classes) lowest = std::min(lowest, c);
  if (lowest < 0) throw MsfError("class id " + std::to_string(lowest) + " is negative: class ids start at 0");
  if (!(o.shift > 0 && std::isfinite(o.shift))) throw MsfError("--shift must be > 0 (1 = none), got " + py::repr(o.shift));
  return o;
}

std::string help_text() {
  return R"(Usage: msf-run-native [OPTIONS]

  Generate class-conditional images with an MSF cascade exported by
  msf-export --engine aoti: scale 0 from noise, each further scale a residual
  conditioned on the accumulated latent (Algorithm 3), then the VAE decoder.
  The same flags and the same images as msf-run, without Python.

  Examples:
    msf-run-native --model art/aoti --class 330 --out img.png
    msf-run-native --model art/aoti --class 1,2,3 --batch 4 --steps 100,50 --cfg 1.4,1.0 --out grid.png

  One line per stage goes to stderr: wall time, engine calls and their time;
  then the total with the overhead (end-to-end time / time inside engine
  calls) and the peak memory.

Options:
  --class TEXT                    Class id(s), comma separated, e.g. 330 or
                                  1,2,3; each in [0, num_classes).  [default: 330]
  --seed INTEGER RANGE            Image j of the output uses seed+j.  [default: 0; x>=0]
  --batch INTEGER RANGE           Images PER CLASS: --class 1,2 --batch 4
                                  makes 8 images (a 2x4 grid).  [default: 1; x>=1]
  --steps TEXT                    Steps per stage, comma separated, e.g. 100,50
                                  [default: the model's own plan (the manifest's
                                  "sampling", from cascade.json), else 100,50 for
                                  two stages, 100 for one; 50 per further stage].
  --cfg TEXT                      CFG scale per stage (Eq. 7; 1 = off), e.g.
                                  1.4,1.0 [default: the model's own, else 1.4
                                  then 1.0; 1.5 for a DiT].
  --solver [euler|heun]           ODE solver.  [default: euler]
  --shift FLOAT                   Timestep shift (> 1 spends more steps near
                                  the noise end; 1 = uniform grid).  [default: 1.0]
  --model PATH                    An artifact folder from msf-export --engine
                                  aoti (required).
  --backend [aoti]                Engine backend: aoti only (msf-run runs the
                                  others).
  --device [auto|cpu|cuda]        auto = cuda when built with CUDA and a GPU is
                                  present; the artifact must be compiled for it.  [default: auto]
  --cuda-graph / --no-cuda-graph  Capture the whole cascade in one CUDA graph
                                  and replay it [default: on with CUDA].
  --out PATH                      Output PNG (a grid when there are several
                                  images), written atomically.  [default: img.png]
  --save-scales                   Also write OUT.scale<i>.png: the decoded
                                  accumulation after each scale (paper Fig. 2c).
  --dtype, --compile              Accepted for msf-run's command lines; refused
                                  unless fp32 / absent (an artifact's precision
                                  is set by msf-export).
  --version                       Show the version and exit.
  -h, --help                      Show this message and exit.
)";
}

}  // namespace msf
