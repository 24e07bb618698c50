#include "agent/agent_json.h"

#include <nlohmann/json.hpp>

#include "agent/memory_reserve.h"
#include "core/ids.h"

namespace tern::agent {
namespace {

using nlohmann::json;

json ManifestJson(const Manifest& m) {
  return json{{"name", m.name},
              {"version", m.version},
              {"stateful", m.stateful},
              {"handlers", m.handlers},
              {"tenant", m.tenant},
              {"replicas", m.replicas},
              {"limits",
               {{"memory_mib", m.limits.memory_mib},
                {"cpu_ms", m.limits.cpu_ms},
                {"request_kib", m.limits.request_kib},
                {"response_kib", m.limits.response_kib}}}};
}

json ServiceJson(const ServiceStatus& s) {
  return json{{"manifest", ManifestJson(s.manifest)},
              {"module_hash", s.module_hash},
              {"module_bytes", s.module_bytes},
              {"instances", s.instances}};
}

}  // namespace

std::string ServiceToJson(const ServiceStatus& s) { return ServiceJson(s).dump(); }

std::string StatusToJson(const AgentStatus& st) {
  json services = json::array();
  for (const auto& s : st.services) services.push_back(ServiceJson(s));
  json instances = json::array();
  for (const auto& i : st.instances) {
    instances.push_back(json{{"id", i.id},
                             {"service", i.service},
                             {"worker", i.worker},
                             {"requests", i.requests},
                             {"failures", i.failures},
                             {"rollbacks", i.rollbacks},
                             {"expired", i.expired},
                             {"memory_bytes", i.memory_bytes},
                             {"pages_copied", i.pages_copied},
                             {"dirty_tracking", i.dirty_tracking},
                             {"deduplicated", i.deduplicated},
                             {"queued", i.queued},
                             {"exec_ns_total", i.exec_ns_total},
                             {"cpu_ns_total", i.cpu_ns_total},
                             {"reply_bytes_total", i.reply_bytes_total},
                             {"latency_hist", i.latency_hist},
                             {"data",
                              {{"reads", i.data.reads},
                               {"local_bytes", i.data.local_bytes},
                               {"remote_bytes", i.data.remote_bytes}}},
                             {"last_error", i.last_error},
                             // 16 hex digits, as in X-Tern-Trace-Id; "" before any request
                             {"last_trace_id", i.last_trace_id ? TraceIdHex(i.last_trace_id) : ""},
                             {"last_idempotency_key", i.last_idempotency_key}});
    if (i.durable) {
      // "keepers": those that get its records; "keepers_out": dropped out (failed while
      // the other acknowledged) until the controller assigns keepers again.
      instances.back()["durable"] = json{{"keepers", i.keepers},
                                         {"keepers_out", i.keepers_out},
                                         {"degraded_acks", i.journal_degraded},
                                         {"journal_seq", i.journal_seq},
                                         {"appends", i.journal_appends},
                                         {"failures", i.journal_failures},
                                         {"full_records", i.journal_full},
                                         {"bytes", i.journal_bytes},
                                         {"wait_ns_total", i.journal_ns_total}};
    }
  }
  return json{{"device", st.device},
              {"workers", st.workers},
              {"cached_modules", st.cached_modules},
              {"services", services},
              {"instances", instances}}
      .dump();
}

std::string MemoryReserveToJson(const MemoryReserve* r) {
  const MemoryReserve::Stats s = r != nullptr ? r->stats() : MemoryReserve::Stats{};
  return nlohmann::json{{"target_bytes", s.target_bytes},
                        {"ready_bytes", s.ready_bytes},
                        {"moved_bytes", s.moved_bytes},
                        {"failed_moves", s.failed_moves}}
      .dump();
}

std::string MigrationReportToJson(const MigrationReport& r) {
  nlohmann::json rounds = nlohmann::json::array();
  for (const MigrationRound& x : r.rounds) {
    rounds.push_back({{"pages", x.pages}, {"bytes", x.bytes}, {"us", x.ns / 1000}});
  }
  return nlohmann::json{{"instance", r.instance},
                        {"to_device", r.to_device},
                        {"mode", r.mode},
                        {"codec", r.codec},
                        {"transport", r.transport},
                        {"transport_note", r.transport_note},
                        {"shm_bytes", r.shm_bytes},
                        {"memory_bytes", r.memory_bytes},
                        {"rounds", rounds.size()},
                        {"round_detail", rounds},
                        {"final_pages", r.final_pages},
                        {"bytes_sent", r.bytes_sent},
                        {"bytes_raw", r.bytes_raw},
                        {"total_us", r.total_ns / 1000},
                        {"freeze_wait_us", r.freeze_wait_ns / 1000},
                        {"downtime_us", r.downtime_ns / 1000},
                        {"forwarded", r.held}}
      .dump();
}

}  // namespace tern::agent
