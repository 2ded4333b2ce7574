// pybind11 bindings: empas._core. Only non-tensor objects cross here; every
// C++ exception becomes a Python exception (FormatError / InfeasibleError are
// ValueError subclasses).
#include <pybind11/functional.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "empas/archetypes.hpp"
#include "empas/error.hpp"
#include "empas/exact.hpp"
#include "empas/formats.hpp"
#include "empas/hypervolume.hpp"
#include "empas/nsga2.hpp"
#include "empas/parallel.hpp"
#include "empas/space.hpp"
#include "empas/version.hpp"

namespace py = pybind11;
using namespace empas;
using json = nlohmann::json;

namespace {

NegativePolicy parse_negative(const std::string& s) {
  if (s == "error") return NegativePolicy::Error;
  if (s == "clamp") return NegativePolicy::Clamp;
  if (s == "keep") return NegativePolicy::Keep;
  throw ValueError("negative must be 'error', 'clamp' or 'keep', got '" + s + "'");
}

template <class T>
py::array_t<T> to_array(const std::vector<T>& v, std::vector<py::ssize_t> shape) {
  py::array_t<T> a(shape);
  if (!v.empty()) std::memcpy(a.mutable_data(), v.data(), v.size() * sizeof(T));
  return a;
}

py::object json_to_py(const json& j) {
  py::object loads = py::module_::import("json").attr("loads");
  return loads(j.dump());
}

std::vector<std::vector<Gene>> genomes_from(const py::object& obj, int n_units) {
  std::vector<std::vector<Gene>> out;
  if (obj.is_none()) return out;
  auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!a) throw ValueError("initial population must be an integer array of shape (k, n_units)");
  if (a.ndim() != 2 || a.shape(1) != n_units)
    throw ValueError("initial population must have shape (k, " + std::to_string(n_units) + ")");
  const int64_t* d = a.data();
  for (py::ssize_t i = 0; i < a.shape(0); ++i) {
    std::vector<Gene> g(n_units);
    for (int u = 0; u < n_units; ++u) {
      const int64_t v = d[i * n_units + u];
      if (v < 0 || v > 255) throw ValueError("initial population holds an invalid choice index");
      g[u] = static_cast<Gene>(v);
    }
    out.push_back(std::move(g));
  }
  return out;
}

std::vector<Gene> genome_from(const py::object& obj, int n_units) {
  auto a = py::array_t<int64_t, py::array::c_style | py::array::forcecast>::ensure(obj);
  if (!a || a.ndim() != 1 || a.shape(0) != n_units)
    throw ValueError("a genome must be a 1-D integer array of length " + std::to_string(n_units));
  std::vector<Gene> g(n_units);
  for (int u = 0; u < n_units; ++u) {
    const int64_t v = a.data()[u];
    if (v < 0 || v > 255) throw ValueError("genome holds an invalid choice index");
    g[u] = static_cast<Gene>(v);
  }
  return g;
}

py::dict stats_dict(const GenerationStats& s) {
  py::dict d;
  d["generation"] = s.generation;
  d["evaluations"] = s.evaluations;
  d["front_size"] = s.front_size;
  d["n_feasible"] = s.n_feasible;
  d["best_loss"] = s.best_loss;
  d["min_bytes"] = s.min_bytes;
  d["hypervolume"] = s.hypervolume;
  d["seconds"] = s.seconds;
  return d;
}

py::dict build_info() {
  py::dict d;
  d["version"] = kVersion;
#ifdef _OPENMP
  d["openmp"] = true;
  d["openmp_version"] = _OPENMP;
#else
  d["openmp"] = false;
#endif
  d["max_threads"] = resolve_threads(0);
  // Built by the same configure (the torch ops are a separate library,
  // libempas_ops.so, loaded by torch; empas.build_info() adds what is loadable).
#ifdef EMPAS_BUILT_CUDA
  d["cuda"] = true;
#else
  d["cuda"] = false;
#endif
#ifdef EMPAS_BUILT_TORCH_OPS
  d["torch_ops"] = true;
  d["ops_torch_version"] = EMPAS_OPS_TORCH_VERSION;
  d["ops_file"] = EMPAS_OPS_FILE;
#else
  d["torch_ops"] = false;
#endif
#ifdef __VERSION__
  d["compiler"] = __VERSION__;
#endif
#ifdef NDEBUG
  d["build_type"] = "release";
#else
  d["build_type"] = "debug";
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "EMPAS native core: search space, proxy, NSGA-II, exact front, formats";

  // C++ errors become the Python classes of empas.errors (ValueError subclasses),
  // so they can be caught even where the native module failed to import.
  py::register_exception_translator([](std::exception_ptr p) {
    auto cls = [](const char* name) -> py::object {
      try {
        return py::module_::import("empas.errors").attr(name);
      } catch (const py::error_already_set&) {
        return py::reinterpret_borrow<py::object>(PyExc_ValueError);
      }
    };
    try {
      if (p) std::rethrow_exception(p);
    } catch (const FormatError& e) {
      py::set_error(cls("FormatError"), e.what());
    } catch (const InfeasibleError& e) {
      py::set_error(cls("InfeasibleError"), e.what());
    } catch (const ValueError& e) {
      py::set_error(PyExc_ValueError, e.what());
    } catch (const json::exception& e) {
      py::set_error(cls("FormatError"), e.what());
    }
  });

  m.def("build_info", &build_info, "What this native build contains (version, OpenMP, CUDA, torch ops).");

  // Identifiers of the file formats the core reads and writes (empas/version.hpp),
  // e.g. formats["profile"] == kProfileFormat.
  py::dict formats;
  for (const FormatId& f : kFormats) formats[f.name] = f.id;
  m.attr("formats") = formats;

  py::class_<Quantizer>(m, "Quantizer")
      .def(py::init([](std::string scheme, std::string granularity, int64_t group_size, int scale_bytes,
                       int zero_bytes, std::string bytes_model) {
             Quantizer q{scheme, granularity, group_size, scale_bytes, zero_bytes, bytes_model};
             q.validate();
             return q;
           }),
           py::arg("scheme") = "symmetric", py::arg("granularity") = "group", py::arg("group_size") = 128,
           py::arg("scale_bytes") = 2, py::arg("zero_bytes") = 0, py::arg("bytes_model") = "packed")
      .def_readonly("scheme", &Quantizer::scheme)
      .def_readonly("granularity", &Quantizer::granularity)
      .def_readonly("group_size", &Quantizer::group_size)
      .def_readonly("scale_bytes", &Quantizer::scale_bytes)
      .def_readonly("zero_bytes", &Quantizer::zero_bytes)
      .def_readonly("bytes_model", &Quantizer::bytes_model);

  m.def(
      "unit_bytes",
      [](int64_t params, std::vector<std::array<int64_t, 2>> shapes, int bits, const Quantizer& q) {
        Unit u;
        u.name = "unit";
        u.params = params;
        u.shapes = std::move(shapes);
        return unit_bytes(u, bits, q);
      },
      py::arg("params"), py::arg("shapes"), py::arg("bits"), py::arg("quantizer"),
      "Bytes of a unit (params weights, member shapes [out, in]) stored at `bits`.");

  py::class_<Problem>(m, "Problem")
      .def_readonly("n_units", &Problem::n_units)
      .def_readonly("n_choices", &Problem::n_choices)
      .def_readonly("choice_bits", &Problem::choice_bits)
      .def_property_readonly("n_objectives", &Problem::n_objectives)
      .def_property_readonly("min_bytes", &Problem::min_bytes)
      .def_property_readonly("max_total_bytes", &Problem::max_total_bytes)
      .def_property_readonly("worst_loss", &Problem::worst_loss)
      .def_property_readonly("best_loss", &Problem::best_loss)
      .def_property_readonly("min_avg_bits", &Problem::min_avg_bits)
      .def_property_readonly("reference_point", &Problem::reference_point)
      .def_property_readonly("fingerprint", [](const Problem& p) { return problem_fingerprint(p); })
      .def_property_readonly("allowed",
                             [](const Problem& p) { return to_array(p.allowed, {p.n_units, p.n_choices}); })
      .def(
          "extreme_genome",
          [](const Problem& p, bool smallest) {
            auto g = p.extreme_genome(smallest);
            return to_array(g, {p.n_units});
          },
          py::arg("smallest"))
      .def(
          "evaluate",
          [](const Problem& p, const py::object& genomes) {
            auto gs = genomes_from(genomes, p.n_units);
            const py::ssize_t k = static_cast<py::ssize_t>(gs.size());
            py::array_t<double> loss(k), avg(k), lat(k), viol(k);
            py::array_t<int64_t> bytes(k);
            for (py::ssize_t i = 0; i < k; ++i) {
              p.check_genome(gs[i]);
              const Evaluation e = p.evaluate(gs[i].data());
              loss.mutable_at(i) = e.loss;
              bytes.mutable_at(i) = e.bytes;
              avg.mutable_at(i) = e.avg_bits;
              lat.mutable_at(i) = e.latency;
              viol.mutable_at(i) = e.violation;
            }
            py::dict d;
            d["loss"] = loss;
            d["bytes"] = bytes;
            d["avg_bits"] = avg;
            d["latency"] = lat;
            d["violation"] = viol;
            return d;
          },
          py::arg("genomes"), "Proxy metrics of k genomes (k x n_units choice indices).");

  py::class_<Profile>(m, "Profile")
      .def_static(
          "from_json",
          [](const std::string& text, const std::string& negative) {
            return Profile::from_json(parse_json(text, "profile"), parse_negative(negative));
          },
          py::arg("text"), py::arg("negative") = "error")
      .def_static(
          "load",
          [](const std::string& path, const std::string& negative) {
            return Profile::from_json(parse_json(read_file(path), "profile '" + path + "'"),
                                      parse_negative(negative));
          },
          py::arg("path"), py::arg("negative") = "error")
      .def(
          "to_json", [](const Profile& p, int indent) { return p.to_json().dump(indent); },
          py::arg("indent") = 2)
      .def("save", [](const Profile& p,
                      const std::string& path) { write_file_atomic(path, p.to_json().dump(2) + "\n"); })
      .def_property_readonly("n_units", &Profile::n_units)
      .def_property_readonly("n_choices", &Profile::n_choices)
      .def_readonly("choices", &Profile::choices)
      .def_readonly("baseline", &Profile::baseline)
      .def_readonly("loss_kind", &Profile::loss_kind)
      .def_readonly("unsearched_bytes", &Profile::unsearched_bytes)
      .def_property_readonly("model_name", &Profile::model_name)
      .def_property_readonly("fingerprint", &Profile::fingerprint)
      .def_property_readonly("quantizer", [](const Profile& p) { return p.quantizer; })
      .def_property_readonly("meta",
                             [](const Profile& p) {
                               py::dict d;
                               d["model"] = json_to_py(p.model);
                               d["calibration"] = json_to_py(p.calibration);
                               d["timings"] = json_to_py(p.timings);
                               d["source"] = json_to_py(p.source);
                               return d;
                             })
      .def_property_readonly("unit_names",
                             [](const Profile& p) {
                               std::vector<std::string> v;
                               for (const auto& u : p.units) v.push_back(u.name);
                               return v;
                             })
      .def_property_readonly("unit_kinds",
                             [](const Profile& p) {
                               std::vector<std::string> v;
                               for (const auto& u : p.units) v.push_back(u.kind);
                               return v;
                             })
      .def_property_readonly("unit_params",
                             [](const Profile& p) {
                               std::vector<int64_t> v;
                               for (const auto& u : p.units) v.push_back(u.params);
                               return to_array(v, {p.n_units()});
                             })
      .def_property_readonly("unit_modules",
                             [](const Profile& p) {
                               std::vector<std::vector<std::string>> v;
                               for (const auto& u : p.units) v.push_back(u.modules);
                               return v;
                             })
      .def_property_readonly("delta",
                             [](const Profile& p) { return to_array(p.delta, {p.n_units(), p.n_choices()}); })
      .def_property_readonly("stderr",
                             [](const Profile& p) -> py::object {
                               if (p.stderr_.empty()) return py::none();
                               return to_array(p.stderr_, {p.n_units(), p.n_choices()});
                             })
      .def_property_readonly("latency",
                             [](const Profile& p) -> py::object {
                               if (p.latency.empty()) return py::none();
                               return to_array(p.latency, {p.n_units(), p.n_choices()});
                             })
      .def_property_readonly(
          "bytes_table",
          [](const Profile& p) { return to_array(p.bytes_table(), {p.n_units(), p.n_choices()}); })
      .def(
          "to_problem",
          [](const Profile& p, int64_t max_bytes, double max_avg_bits, std::map<std::string, int> pinned,
             std::vector<int> allowed_bits, bool use_latency) {
            Constraints c{max_bytes, max_avg_bits};
            return p.to_problem(c, pinned, allowed_bits, use_latency);
          },
          py::arg("max_bytes") = -1, py::arg("max_avg_bits") = -1.0,
          py::arg("pinned") = std::map<std::string, int>{}, py::arg("allowed_bits") = std::vector<int>{},
          py::arg("use_latency") = false)
      .def(
          "plan_genome",
          [](const Profile& p, const std::string& plan_json) {
            auto g = plan_genome(p, Plan::from_json(parse_json(plan_json, "plan")));
            return to_array(g, {p.n_units()});
          },
          py::arg("plan_json"), "Choice indices of a plan (validated against this profile).")
      .def(
          "make_plan",
          [](const Profile& p, const Problem& prob, const py::object& genome,
             const std::string& fingerprint) {
            Plan plan = make_plan(p, prob, genome_from(genome, p.n_units()), fingerprint);
            return plan.to_json().dump();
          },
          py::arg("problem"), py::arg("genome"), py::arg("fingerprint") = "",
          (std::string(kPlanFormat) +
           " JSON text of a genome (fingerprint: the profile's, if already known).")
              .c_str());

  m.def(
      "normalize_plan",
      [](const std::string& text) { return Plan::from_json(parse_json(text, "plan")).to_json().dump(); },
      py::arg("text"),
      (std::string("Validates a plan (") + kPlanFormat + " or original EMPAS artifact) and returns " +
       kPlanFormat + " JSON.")
          .c_str());
  m.def("write_file_atomic", &write_file_atomic, py::arg("path"), py::arg("text"));

  m.def(
      "run_nsga2",
      [](const Problem& p, int pop_size, int generations, uint64_t seed, double crossover_prob,
         double mutation_prob, int threads, bool eliminate_duplicates, bool seed_uniform,
         const py::object& initial, const std::string& checkpoint, int checkpoint_every,
         const py::object& progress, const std::string& sampling, const std::string& mutation) {
        NSGA2Config c;
        c.pop_size = pop_size;
        c.generations = generations;
        c.seed = seed;
        c.crossover_prob = crossover_prob;
        c.mutation_prob = mutation_prob;
        c.threads = threads;
        c.eliminate_duplicates = eliminate_duplicates;
        c.seed_uniform = seed_uniform;
        c.initial = genomes_from(initial, p.n_units);
        c.checkpoint_path = checkpoint;
        c.checkpoint_every = checkpoint_every;
        c.sampling = sampling;
        c.mutation = mutation;
        // Runs between generations with the GIL: delivers Ctrl-C (KeyboardInterrupt)
        // and calls the user's callback; either may raise, which ends the search.
        ProgressFn fn = [&progress](const GenerationStats& s) {
          py::gil_scoped_acquire gil;
          if (PyErr_CheckSignals() != 0) throw py::error_already_set();
          if (progress.is_none()) return true;
          py::object r = progress(stats_dict(s));
          return r.is_none() || r.cast<bool>();
        };
        NSGA2Result r;
        {
          py::gil_scoped_release release;
          r = run_nsga2(p, c, fn);
        }
        const py::ssize_t N = static_cast<py::ssize_t>(r.violation.size());
        py::dict d;
        d["genomes"] = to_array(r.genomes, {N, r.n_units});
        d["objectives"] = to_array(r.objectives, {N, r.n_objectives});
        d["violation"] = to_array(r.violation, {N});
        d["rank"] = to_array(r.rank, {N});
        d["front"] = r.front;
        py::list h;
        for (const auto& s : r.history) h.append(stats_dict(s));
        d["history"] = h;
        d["evaluations"] = r.evaluations;
        d["generations_run"] = r.generations_run;
        d["resumed_from"] = r.resumed_from;
        d["stopped_early"] = r.stopped_early;
        d["seconds"] = r.seconds;
        return d;
      },
      py::arg("problem"), py::arg("pop_size") = 100, py::arg("generations") = 50, py::arg("seed") = 0,
      py::arg("crossover_prob") = 0.7, py::arg("mutation_prob") = -1.0, py::arg("threads") = 0,
      py::arg("eliminate_duplicates") = true, py::arg("seed_uniform") = true, py::arg("initial") = py::none(),
      py::arg("checkpoint") = "", py::arg("checkpoint_every") = 10, py::arg("progress") = py::none(),
      py::arg("sampling") = "stratified", py::arg("mutation") = "neighbor",
      "NSGA-II over the proxy. Returns final population, front indices and history.");

  m.def("nsga2_memory_estimate", &nsga2_memory_estimate, py::arg("pop_size"), py::arg("n_units"),
        py::arg("n_objectives") = 2, "Estimated peak bytes of run_nsga2 (checked before it allocates).");
  m.def("memory_limit_bytes", &memory_limit_bytes, "The most bytes a search may take (half of RAM).");
  m.def("max_threads", &max_threads, "The cap on threads: the processors this process may use.");

  m.def(
      "exact_front",
      [](const Problem& p, int64_t max_points, int64_t eps_bytes) {
        ExactFront f;
        {
          py::gil_scoped_release release;
          f = exact_front(p, ExactConfig{max_points, eps_bytes});
        }
        const py::ssize_t P = static_cast<py::ssize_t>(f.size());
        py::dict d;
        d["genomes"] = to_array(f.genomes, {P, f.n_units});
        d["loss"] = to_array(f.loss, {P});
        d["bytes"] = to_array(f.bytes, {P});
        d["exact"] = f.exact;
        d["eps_bytes"] = f.eps_bytes;
        d["error_bound_bytes"] = f.error_bound_bytes;
        d["peak_states"] = f.peak_states;
        return d;
      },
      py::arg("problem"), py::arg("max_points") = 2'000'000, py::arg("eps_bytes") = 0,
      "Exact (or epsilon-grid) loss-vs-bytes Pareto front, ascending bytes.");

  m.def(
      "hypervolume",
      [](const py::array_t<double, py::array::c_style | py::array::forcecast>& pts, std::vector<double> ref) {
        if (pts.ndim() != 2) throw ValueError("points must be a 2-D array (n, m)");
        std::vector<double> v(pts.data(), pts.data() + pts.size());
        return hypervolume(v, static_cast<int>(pts.shape(1)), ref);
      },
      py::arg("points"), py::arg("ref"), "Hypervolume (minimization) of (n, m) points, m = 2 or 3.");

  m.def(
      "select_archetypes",
      [](const std::vector<double>& loss, const std::vector<double>& bytes) {
        const Archetypes a = select_archetypes(loss, bytes);
        py::dict d;
        d["max_accuracy"] = a.max_accuracy;
        d["balanced"] = a.balanced;
        d["max_compression"] = a.max_compression;
        return d;
      },
      py::arg("loss"), py::arg("bytes"));
  m.def("best_under_budget", &best_under_budget, py::arg("loss"), py::arg("bytes"), py::arg("budget"));
}
