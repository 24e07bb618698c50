#include "agent/agent_server.h"

#include <arpa/inet.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>

#include "agent/agent.h"
#include "agent/agent_json.h"
#include "core/base64.h"
#include "core/clock.h"
#include "core/ids.h"
#include "core/logging.h"
#include "core/mutex.h"
#include "core/task_thread.h"
#include "core/version.h"
#include "storage/dataset_store.h"
#include "transport/event_loop.h"
#include "transport/http.h"
#include "transport/json_api.h"
#include "transport/shm.h"
#include "transport/tcp.h"
#include "storage/journal.h"
#include "wasm/snapshot.h"

namespace tern::agent {

using transport::Frame;
using transport::FrameType;
using transport::HttpRequest;
using transport::HttpResponder;
using transport::HttpResponse;
using transport::ErrorResponse;

namespace {

// The last path segment after `prefix` ("/v1/instances/" + "echo-1/snapshot" etc.).
std::vector<std::string> PathParts(const std::string& path) {
  std::vector<std::string> parts;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string::npos) j = path.size();
    if (j > i) parts.push_back(transport::PercentDecode(path.substr(i, j - i), false));
    i = j + 1;
  }
  return parts;
}

}  // namespace

std::string_view TcpServingName(TcpServing s) {
  return s == TcpServing::kWorker ? "worker" : "loop";
}

Result<TcpServing> ParseTcpServing(std::string_view s) {
  if (s == "worker") return TcpServing::kWorker;
  if (s == "loop") return TcpServing::kLoop;
  return InvalidArgumentError(fmt::format(
      "TCP serving must be 'worker' (workers own their connections) or 'loop' (the I/O "
      "thread reads and writes them), not '{}'",
      s));
}

struct AgentServer::Impl {
  Agent* agent = nullptr;
  AgentServerOptions options;
  std::unique_ptr<transport::EventLoopThread> loop;
  std::unique_ptr<transport::FrameServer> frames;      // TcpServing::kLoop
  std::unique_ptr<transport::TcpListener> listener;   // TcpServing::kWorker
  uint64_t rejected_connections = 0;                  // loop thread (kWorker)
  std::unique_ptr<transport::HttpServer> http;
  std::unique_ptr<TaskThread> admin;
  std::unique_ptr<TaskThread> migrations;  // POST .../migrate, one at a time
  std::unique_ptr<transport::ShmListener> shm;

  // New shared-memory clients: each connection goes to the worker that owns the
  // instance the client names (its hint), or round-robin.
  void OnShmReadable() {
    for (int i = 0; i < 16; ++i) {
      std::string hint;
      const transport::Doorbell* chosen = nullptr;
      Result<std::unique_ptr<transport::ShmConnection>> c =
          shm->Accept([&](std::string_view h) { return chosen = agent->DoorbellFor(h); }, &hint);
      if (!c.ok()) {
        TERN_LOG(WARN) << "shared-memory client refused: " << c.status();
        continue;
      }
      if (*c == nullptr) return;
      Status st = agent->AdoptShmConnection(std::move(*c), chosen);
      if (!st.ok()) TERN_LOG(WARN) << "shared-memory connection dropped: " << st;
    }
  }

  uint16_t frame_port() const { return frames ? frames->port() : listener->port(); }

  // TcpServing::kWorker: a new connection goes to a worker, which serves it from now on.
  void OnTcpAccept(transport::UniqueFd fd) {
    if (agent->tcp_stats().open >= options.max_frame_connections) {
      ++rejected_connections;
      Status why = ResourceExhaustedError(fmt::format(
          "server has too many connections (limit {}); try later", options.max_frame_connections));
      TERN_LOG(WARN) << "rejecting connection from " << transport::PeerAddress(fd.get()) << ": "
                     << why;
      // A fresh socket's send buffer takes one small frame; then it closes.
      std::string bytes;
      if (transport::EncodeFrame(transport::MakeErrorFrame(0, why), &bytes).ok()) {
        (void)::send(fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
      }
      return;
    }
    Status st = agent->AdoptTcpConnection(std::move(fd), options.tcp_limits);
    if (!st.ok()) TERN_LOG(WARN) << "TCP frame connection dropped: " << st;
  }

  nlohmann::json FrameConnectionsJson() {
    nlohmann::json j{{"serving", TcpServingName(options.tcp_serving)}};
    if (frames) {
      j["open"] = frames->connection_count();
      j["rejected"] = frames->rejected_connections();
      return j;
    }
    TcpConnStats s = agent->tcp_stats();
    j["accepted"] = s.accepted;
    j["open"] = s.open;
    j["rejected"] = rejected_connections;
    j["moved"] = s.moved;
    j["closed_malformed"] = s.closed_malformed;
    j["closed_slow"] = s.closed_slow;
    j["output_bytes"] = s.output_bytes;
    return j;
  }

  void OnFrame(transport::FrameConnection* conn, Frame f) {
    if (f.type == FrameType::kInvoke && f.service == "$journal") {
      transport::FrameConnectionRef ref = conn->ref();
      agent->ServeJournalFrame(std::move(f), [ref](Frame out) { ref.Send(std::move(out)); });
      return;
    }
    if (std::optional<Frame> answer = AnswerWithoutGuest(agent, f)) {
      // A failed send closes the connection by itself; nothing more to do.
      (void)conn->Send(*answer);
      return;
    }
    transport::FrameConnectionRef ref = conn->ref();
    const uint64_t id = f.request_id;
    agent->Invoke(RequestFromFrame(std::move(f), conn->received_ns()),
                  [ref, id](InvokeResult r) { ref.Send(AnswerFrame(id, std::move(r))); });
  }

  transport::HttpRouter Routes() {
    transport::HttpRouter r;
    r.Handle("GET", "/v1/info", [this](const HttpRequest&) {
      nlohmann::json calls{
          {"inproc", agent->calls_by_tier(dataplane::Tier::kInProcess)},
          {"shm", agent->calls_by_tier(dataplane::Tier::kSharedMemory)},
          {"tcp", agent->calls_by_tier(dataplane::Tier::kTcp)},
          {"moved", agent->moved_calls()}};
      nlohmann::json j{{"device", agent->options().device},
                       {"host", agent->options().host},
                       {"shm", agent->options().shm_path},
                       {"call_transport", dataplane::TierPolicyName(agent->options().tier_policy)},
                       {"calls", calls},
                       {"data_remote_bytes_by_host", agent->RemoteDataBytesByHost()},
                       {"partition",
                        {{"mode", agent->partition().mode},
                         {"guest_cores", agent->partition().guest_cores},
                         {"reserved", agent->options().reserved},
                         {"cgroup", agent->partition().dir}}},
                       {"datasets_dir", agent->datasets() ? agent->datasets()->root() : ""},
                       {"frame_port", frame_port()},
                       {"frame_connections", FrameConnectionsJson()},
                       {"admin_port", http ? http->port() : 0},
                       {"workers", agent->options().workers},
                       {"memory_reserve", nlohmann::json::parse(MemoryReserveToJson(
                                              agent->memory_reserve()))},
                       {"abi", "tern_v1"},
                       {"version", kTernVersion}};
      return HttpResponse::Json(200, j.dump());
    });
    r.Handle("GET", "/v1/locations", [this](const HttpRequest&) {
      return HttpResponse::Json(200, dataplane::LocationsToJson(agent->locations().All()));
    });
    // PUT replaces the whole table; POST upserts (stale epochs are ignored).
    auto set_locations = [this](const HttpRequest& req) {
      Result<std::vector<dataplane::InstanceLocation>> locs =
          dataplane::ParseLocationsJson(req.body);
      if (!locs.ok()) return ErrorResponse(locs.status());
      size_t applied = locs->size(), stale = 0;
      if (req.method == "PUT") {
        agent->locations().Replace(std::move(*locs));
      } else {
        for (const dataplane::InstanceLocation& l : *locs) {
          Result<bool> r = agent->locations().Upsert(l);
          if (!r.ok()) return ErrorResponse(r.status());
          if (!*r) ++stale;
        }
        applied -= stale;
      }
      nlohmann::json j{{"applied", applied}, {"stale", stale},
                       {"version", agent->locations().version()}};
      return HttpResponse::Json(200, j.dump());
    };
    r.Handle("PUT", "/v1/locations", set_locations);
    r.Handle("POST", "/v1/locations", set_locations);
    r.Handle("PUT", "/v1/links", [this](const HttpRequest& req) {
      nlohmann::json j = nlohmann::json::parse(req.body, nullptr, false);
      if (!j.is_array()) {
        return ErrorResponse(InvalidArgumentError(
            "links: expected a JSON array of {\"a\", \"b\", \"latency\", \"bandwidth\"}"));
      }
      std::vector<std::tuple<std::string, std::string, dataplane::LinkSpec>> links;
      for (size_t i = 0; i < j.size(); ++i) {
        const nlohmann::json& l = j[i];
        if (!l.is_object() || !l.contains("a") || !l.contains("b") || !l["a"].is_string() ||
            !l["b"].is_string()) {
          return ErrorResponse(InvalidArgumentError(
              fmt::format("links[{}]: needs string fields \"a\" and \"b\" (host names)", i)));
        }
        std::string lat = l.value("latency", std::string("0"));
        std::string bw = l.value("bandwidth", std::string("unlimited"));
        Result<dataplane::LinkSpec> spec = dataplane::ParseLinkSpec(lat, bw);
        if (!spec.ok()) return ErrorResponse(spec.status().WithPrefix(fmt::format("links[{}]", i)));
        links.emplace_back(l["a"].get<std::string>(), l["b"].get<std::string>(), *spec);
      }
      for (auto& [a, b, spec] : links) agent->links().Set(a, b, spec);
      return HttpResponse::Json(200, nlohmann::json{{"links", links.size()}}.dump());
    });
    r.Handle("GET", "/v1/dataset-locations", [this](const HttpRequest&) {
      nlohmann::json out = nlohmann::json::array();
      for (const DatasetLocation& d : agent->DatasetLocations()) {
        out.push_back({{"dataset", d.dataset}, {"agent", d.agent}, {"host", d.host},
                       {"tcp", d.tcp}, {"shm", d.shm}});
      }
      return HttpResponse::Json(200, nlohmann::json{{"datasets", out}}.dump());
    });
    r.Handle("PUT", "/v1/dataset-locations", [this](const HttpRequest& req) {
      nlohmann::json j = nlohmann::json::parse(req.body, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("datasets") ||
          !j["datasets"].is_array()) {
        return ErrorResponse(InvalidArgumentError(
            "dataset locations: expected {\"datasets\": [{\"dataset\", \"agent\", \"host\", "
            "\"tcp\", \"shm\"}]}"));
      }
      std::vector<DatasetLocation> locs;
      for (size_t i = 0; i < j["datasets"].size(); ++i) {
        const nlohmann::json& d = j["datasets"][i];
        auto str = [&](const char* k) {
          return d.is_object() && d.contains(k) && d[k].is_string() ? d[k].get<std::string>()
                                                                    : std::string();
        };
        DatasetLocation l{str("dataset"), str("agent"), str("host"), str("tcp"), str("shm")};
        if (!storage::ValidateDatasetName(l.dataset).ok() || l.agent.empty() ||
            (l.tcp.empty() && l.shm.empty())) {
          return ErrorResponse(InvalidArgumentError(fmt::format(
              "datasets[{}]: needs a valid \"dataset\", an \"agent\" and \"tcp\" or \"shm\"",
              i)));
        }
        if (l.host.empty()) l.host = l.agent;
        locs.push_back(std::move(l));
      }
      size_t n = locs.size();
      agent->SetDatasetLocations(std::move(locs));
      return HttpResponse::Json(200, nlohmann::json{{"datasets", n}}.dump());
    });
    r.HandleAsync("*", "/v1/datasets", [this](HttpRequest req, HttpResponder resp) {
      admin->Post([this, req = std::move(req), resp] { resp.Respond(DatasetOp(req)); });
    });
    r.HandleAsync("*", "/v1/datasets/*", [this](HttpRequest req, HttpResponder resp) {
      admin->Post([this, req = std::move(req), resp] { resp.Respond(DatasetOp(req)); });
    });
    r.HandleAsync("*", "/v1/journals", [this](HttpRequest req, HttpResponder resp) {
      admin->Post([this, req = std::move(req), resp] { resp.Respond(JournalOp(req)); });
    });
    r.HandleAsync("*", "/v1/journals/*", [this](HttpRequest req, HttpResponder resp) {
      admin->Post([this, req = std::move(req), resp] { resp.Respond(JournalOp(req)); });
    });
    r.HandleAsync("GET", "/v1/status", [this](HttpRequest, HttpResponder resp) {
      admin->Post([this, resp] {
        resp.Respond(HttpResponse::Json(200, StatusToJson(agent->GetStatus())));
      });
    });
    r.HandleAsync("POST", "/v1/services", [this](HttpRequest req, HttpResponder resp) {
      admin->Post([this, req = std::move(req), resp] { resp.Respond(Deploy(req)); });
    });
    r.HandleAsync("*", "/v1/services/*", [this](HttpRequest req, HttpResponder resp) {
      admin->Post([this, req = std::move(req), resp] { resp.Respond(ServiceOp(req)); });
    });
    r.HandleAsync("*", "/v1/instances/*", [this](HttpRequest req, HttpResponder resp) {
      std::vector<std::string> p = PathParts(req.path);
      if (p.size() == 4 && p[3] == "migrate" && req.method == "POST") {
        // Seconds long: on its own thread, so the admin API stays responsive.
        migrations->Post([this, req = std::move(req), resp] { resp.Respond(MigrateOp(req)); });
        return;
      }
      admin->Post([this, req = std::move(req), resp] { resp.Respond(InstanceOp(req)); });
    });
    r.HandleAsync("POST", "/v1/invoke/*", [this](HttpRequest req, HttpResponder resp) {
      std::vector<std::string> p = PathParts(req.path);  // v1 invoke SERVICE HANDLER
      if (p.size() != 4) {
        resp.Respond(
            ErrorResponse(InvalidArgumentError("use POST /v1/invoke/{service}/{handler}")));
        return;
      }
      Result<transport::CallIds> ids = transport::CallIdsFromHeaders(req);
      if (!ids.ok()) {
        resp.Respond(ErrorResponse(ids.status()));
        return;
      }
      InvokeRequest ir;
      ir.service = p[2];
      ir.handler = p[3];
      ir.payload = std::move(req.body);
      ir.instance = std::string(req.Query("instance"));
      ir.trace_id = ids->trace_id;
      ir.idempotency_key = ids->idempotency_key;
      agent->Invoke(std::move(ir), [resp, trace = ids->trace_id](InvokeResult r) {
        HttpResponse h;
        if (!r.status.ok()) {
          h = ErrorResponse(r.status);
        } else {
          h.status = 200;
          h.content_type = "application/octet-stream";
          h.body = std::move(r.reply);
          h.headers.emplace_back("X-Tern-Instance", r.instance);
          h.headers.emplace_back("X-Tern-Exec-Ns", std::to_string(r.exec_ns));
        }
        h.headers.emplace_back(transport::kTraceIdHeader, TraceIdHex(trace));
        resp.Respond(std::move(h));
      });
    });
    return r;
  }

  HttpResponse Deploy(const HttpRequest& req) {
    nlohmann::json j = nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return ErrorResponse(
          InvalidArgumentError("deploy: body must be a JSON object {\"manifest\": \"<yaml>\", "
                               "\"module_b64\": \"...\"}"));
    }
    if (!j.contains("manifest") || !j["manifest"].is_string()) {
      return ErrorResponse(InvalidArgumentError("deploy: field 'manifest' (YAML text) is missing"));
    }
    if (!j.contains("module_b64") || !j["module_b64"].is_string()) {
      return ErrorResponse(
          InvalidArgumentError("deploy: field 'module_b64' (base64 wasm) is missing"));
    }
    Result<Manifest> m = ParseManifest(j["manifest"].get<std::string>(), "manifest");
    if (!m.ok()) return ErrorResponse(m.status());
    Result<std::string> bytes = Base64Decode(j["module_b64"].get<std::string>());
    if (!bytes.ok()) return ErrorResponse(bytes.status().WithPrefix("module_b64"));
    bool start = !(j.contains("start") && j["start"].is_boolean() && !j["start"].get<bool>());
    Result<ServiceStatus> s = agent->Deploy(*m, std::move(*bytes), start);
    if (!s.ok()) return ErrorResponse(s.status());
    TERN_LOG(INFO) << "deployed " << m->name << " " << m->version << " (" << s->instances.size()
                   << " instances, module " << s->module_hash.substr(0, 12) << ")";
    return HttpResponse::Json(201, ServiceToJson(*s));
  }

  // /v1/datasets[/DATASET[/KEY]]: this device's datasets (admin thread: puts fsync).
  HttpResponse DatasetOp(const HttpRequest& req) {
    storage::DatasetStore* st = agent->datasets();
    if (st == nullptr) {
      return ErrorResponse(FailedPreconditionError(fmt::format(
          "agent {} keeps no datasets (start it with --data-dir or --datasets-dir)",
          agent->options().device)));
    }
    std::vector<std::string> p = PathParts(req.path);  // v1 datasets [DATASET [KEY]]
    if (p.size() == 2 && req.method == "GET") {
      Result<std::vector<storage::DatasetInfo>> ds = st->Datasets();
      if (!ds.ok()) return ErrorResponse(ds.status());
      nlohmann::json out = nlohmann::json::array();
      for (const storage::DatasetInfo& d : *ds) {
        storage::DatasetCounters c = st->counters(d.name);
        out.push_back({{"name", d.name}, {"objects", d.objects}, {"bytes", d.bytes},
                       {"reads", c.reads}, {"bytes_read", c.bytes_read}});
      }
      return HttpResponse::Json(200, out.dump());
    }
    if (p.size() == 3 && req.method == "GET") {
      Result<std::vector<storage::ObjectInfo>> objs = st->List(p[2]);
      if (!objs.ok()) return ErrorResponse(objs.status());
      nlohmann::json out = nlohmann::json::array();
      for (const storage::ObjectInfo& o : *objs) out.push_back({{"key", o.key}, {"size", o.size}});
      return HttpResponse::Json(200, out.dump());
    }
    if (p.size() == 3 && req.method == "DELETE") {
      Status s = st->RemoveDataset(p[2]);
      if (!s.ok()) return ErrorResponse(s);
      return HttpResponse::Json(200, nlohmann::json{{"removed", p[2]}}.dump());
    }
    if (p.size() == 4 && req.method == "PUT") {
      Status s = st->Put(p[2], p[3], req.body);
      if (!s.ok()) return ErrorResponse(s);
      TERN_LOG(INFO) << "dataset object " << p[2] << "/" << p[3] << " stored (" << req.body.size()
                     << " bytes)";
      return HttpResponse::Json(
          201, nlohmann::json{{"dataset", p[2]}, {"key", p[3]}, {"size", req.body.size()}}.dump());
    }
    if (p.size() == 4 && req.method == "GET") {
      uint64_t off = req.Query("offset").empty()
                         ? 0
                         : std::strtoull(std::string(req.Query("offset")).c_str(), nullptr, 10);
      uint64_t len = req.Query("len").empty()
                         ? storage::kMaxObjectBytes
                         : std::strtoull(std::string(req.Query("len")).c_str(), nullptr, 10);
      Result<std::string> r = st->Read(p[2], p[3], off, len);
      if (!r.ok()) return ErrorResponse(r.status());
      HttpResponse h;
      h.content_type = "application/octet-stream";
      h.body = std::move(*r);
      return h;
    }
    if (p.size() == 4 && req.method == "DELETE") {
      Status s = st->Remove(p[2], p[3]);
      if (!s.ok()) return ErrorResponse(s);
      return HttpResponse::Json(200, nlohmann::json{{"removed", p[2] + "/" + p[3]}}.dump());
    }
    return ErrorResponse(NotFoundError(fmt::format(
        "no route {} {} (GET /v1/datasets[/DATASET[/KEY]], PUT or DELETE "
        "/v1/datasets/DATASET/KEY, DELETE /v1/datasets/DATASET)",
        req.method, req.path)));
  }

  // /v1/journals[/ID[/base]]: the journals this device keeps for durable instances
  // elsewhere (admin thread: a base or a drop waits for its fdatasync).
  HttpResponse JournalOp(const HttpRequest& req) {
    storage::JournalStore* js = agent->journals();
    if (js == nullptr) {
      return ErrorResponse(FailedPreconditionError(fmt::format(
          "agent {} keeps no journals (start it with --data-dir or --datasets-dir)",
          agent->options().device)));
    }
    std::vector<std::string> p = PathParts(req.path);  // v1 journals [ID [base]]
    auto info_json = [](const storage::JournalInfo& i) {
      nlohmann::json j{{"instance", i.instance}, {"base_seq", i.base_seq},
                       {"last_seq", i.last_seq}, {"records", i.records}, {"bytes", i.bytes}};
      if (i.full_seq) j["full_seq"] = *i.full_seq;
      return j;
    };
    if (p.size() == 2 && req.method == "GET") {
      nlohmann::json out = nlohmann::json::array();
      for (const storage::JournalInfo& i : js->List()) out.push_back(info_json(i));
      storage::JournalStats st = js->stats();
      return HttpResponse::Json(
          200, nlohmann::json{{"journals", out},
                              {"stats", {{"appends", st.appends}, {"refused", st.refused},
                                         {"syncs", st.syncs}, {"bytes", st.bytes},
                                         {"segments", st.segments},
                                         {"torn_bytes", st.torn_bytes}}}}
                   .dump());
    }
    if (p.size() == 3 && req.method == "GET") {
      // ?after=SEQ: the records that restore the instance on top of the base checkpoint
      // at SEQ (application/octet-stream, concatenated framed records).
      const uint64_t after = std::strtoull(std::string(req.Query("after")).c_str(), nullptr, 10);
      Result<std::string> r = js->Read(p[2], after);
      if (!r.ok()) return ErrorResponse(r.status());
      HttpResponse h;
      h.content_type = "application/octet-stream";
      h.body = std::move(*r);
      if (std::optional<storage::JournalInfo> i = js->Info(p[2])) {
        h.headers.emplace_back("X-Tern-Journal-Last", std::to_string(i->last_seq));
      }
      return h;
    }
    if (p.size() == 4 && p[3] == "base" && req.method == "POST") {
      nlohmann::json j = nlohmann::json::parse(req.body, nullptr, false);
      if (j.is_discarded() || !j.is_object() || !j.contains("seq") || !j["seq"].is_number_unsigned()) {
        return ErrorResponse(InvalidArgumentError(
            "journal base: the body must be {\"seq\": N} (the last record the base checkpoint "
            "covers)"));
      }
      Status s = js->SetBase(p[2], j["seq"].get<uint64_t>());
      if (!s.ok()) return ErrorResponse(s);
      return HttpResponse::Json(200, info_json(js->Info(p[2]).value_or(storage::JournalInfo{p[2]})).dump());
    }
    if (p.size() == 3 && req.method == "DELETE") {
      Status s = js->Drop(p[2]);
      if (!s.ok()) return ErrorResponse(s);
      return HttpResponse::Json(200, nlohmann::json{{"dropped", p[2]}}.dump());
    }
    return ErrorResponse(NotFoundError(fmt::format(
        "no route {} {} (GET /v1/journals[/ID?after=SEQ], POST /v1/journals/ID/base, DELETE "
        "/v1/journals/ID)",
        req.method, req.path)));
  }

  HttpResponse ServiceOp(const HttpRequest& req) {
    std::vector<std::string> p = PathParts(req.path);  // v1 services NAME [instances]
    if (p.size() == 3 && req.method == "DELETE") {
      Status s = agent->Undeploy(p[2]);
      if (!s.ok()) return ErrorResponse(s);
      return HttpResponse::Json(200, nlohmann::json{{"undeployed", p[2]}}.dump());
    }
    if (p.size() == 4 && p[3] == "instances" && req.method == "POST") {
      std::string want;
      if (!req.body.empty()) {
        nlohmann::json j = nlohmann::json::parse(req.body, nullptr, /*allow_exceptions=*/false);
        if (j.is_discarded() || !j.is_object() ||
            (j.contains("id") && !j["id"].is_string())) {
          return ErrorResponse(InvalidArgumentError(
              "start instance: the body must be empty or {\"id\": \"<instance id>\"}"));
        }
        if (j.contains("id")) want = j["id"].get<std::string>();
      }
      Result<std::string> id = agent->StartInstance(p[2], want);
      if (!id.ok()) return ErrorResponse(id.status());
      return HttpResponse::Json(201, nlohmann::json{{"instance", *id}}.dump());
    }
    return ErrorResponse(NotFoundError(fmt::format("no route {} {}", req.method, req.path)));
  }

  // POST /v1/instances/{id}/migrate {"to_tcp": "ip:port", "to_device": "...", "mode":
  // "precopy"|"stop-and-copy", "max_rounds": N, "stop_pages": N, "freeze_timeout_ms": N,
  // "codec": "auto"|"lz4"|"none", "link_bps": N, "transport": "auto"|"tcp"|"shm"}
  HttpResponse MigrateOp(const HttpRequest& req) {
    std::vector<std::string> p = PathParts(req.path);
    nlohmann::json j = nlohmann::json::parse(req.body, nullptr, false);
    if (j.is_discarded() || !j.is_object() || !j.contains("to_tcp") || !j["to_tcp"].is_string()) {
      return ErrorResponse(InvalidArgumentError(
          "migrate: the body must be a JSON object with \"to_tcp\": \"ip:port\" (the target "
          "agent's frame address) and optionally to_device, mode, max_rounds, stop_pages, "
          "freeze_timeout_ms, codec, link_bps, transport"));
    }
    MigrateOptions o;
    try {
      o.to_tcp = j["to_tcp"].get<std::string>();
      o.to_device = j.value("to_device", std::string());
      std::string mode = j.value("mode", std::string("precopy"));
      if (mode != "precopy" && mode != "stop-and-copy") {
        return ErrorResponse(InvalidArgumentError(
            fmt::format("migrate: mode '{}': expected precopy or stop-and-copy", mode)));
      }
      o.precopy = mode == "precopy";
      o.max_rounds = j.value("max_rounds", o.max_rounds);
      o.stop_pages = j.value("stop_pages", o.stop_pages);
      o.freeze_timeout_ns = j.value("freeze_timeout_ms", int64_t{5000}) * 1'000'000;
      o.codec = j.value("codec", o.codec);
      o.link_bps = j.value("link_bps", o.link_bps);
      o.transport = j.value("transport", o.transport);
      if (o.transport != "auto" && o.transport != "tcp" && o.transport != "shm") {
        return ErrorResponse(InvalidArgumentError(fmt::format(
            "migrate: transport '{}': expected auto, tcp or shm", o.transport)));
      }
    } catch (const nlohmann::json::exception& e) {
      return ErrorResponse(InvalidArgumentError(std::string("migrate: ") + e.what()));
    }
    if (o.max_rounds < 1 || o.max_rounds > 64) {
      return ErrorResponse(InvalidArgumentError("migrate: max_rounds must be in [1, 64]"));
    }
    Result<MigrationReport> r = agent->Migrate(p[2], o);
    if (!r.ok()) return ErrorResponse(r.status());
    return HttpResponse::Json(200, MigrationReportToJson(*r));
  }

  HttpResponse InstanceOp(const HttpRequest& req) {
    std::vector<std::string> p = PathParts(req.path);  // v1 instances ID [snapshot]
    if (p.size() == 3 && req.method == "DELETE") {
      Status s = agent->StopInstance(p[2]);
      if (!s.ok()) return ErrorResponse(s);
      return HttpResponse::Json(200, nlohmann::json{{"stopped", p[2]}}.dump());
    }
    if (p.size() == 4 && p[3] == "snapshot" && req.method == "GET") {
      uint64_t seq = 0;
      Result<wasm::Snapshot> snap = agent->Snapshot(p[2], &seq);
      if (!snap.ok()) return ErrorResponse(snap.status());
      HttpResponse h;
      h.content_type = "application/octet-stream";
      h.body = wasm::EncodeSnapshot(*snap);
      h.headers.emplace_back("X-Tern-Module", snap->module_hash);
      // Durable instances: the last journal record the snapshot includes.
      h.headers.emplace_back("X-Tern-Journal-Seq", std::to_string(seq));
      return h;
    }
    if (p.size() == 4 && p[3] == "keeper" && req.method == "PUT") {
      // {"keepers": [{"device", "tcp"}, ...]} (1 or 2), or one: {"device", "tcp"}.
      nlohmann::json j = nlohmann::json::parse(req.body, nullptr, false);
      std::vector<JournalKeeper> keepers;
      bool ok = !j.is_discarded() && j.is_object();
      if (ok) {
        nlohmann::json list = j.contains("keepers") ? j["keepers"] : nlohmann::json::array({j});
        ok = list.is_array();
        for (const nlohmann::json& k : ok ? list : nlohmann::json::array()) {
          if (!k.is_object() || !k.contains("device") || !k["device"].is_string() ||
              !k.contains("tcp") || !k["tcp"].is_string()) {
            ok = false;
            break;
          }
          keepers.push_back({k["device"].get<std::string>(), k["tcp"].get<std::string>()});
        }
      }
      if (!ok) {
        return ErrorResponse(InvalidArgumentError(
            "keeper: the body must be {\"keepers\": [{\"device\": \"...\", \"tcp\": "
            "\"ip:port\"}, ...]} or one {\"device\", \"tcp\"} (the frame addresses of the "
            "agents that keep the instance's journal)"));
      }
      Status s = agent->SetKeepers(p[2], keepers);
      if (!s.ok()) return ErrorResponse(s);
      nlohmann::json names = nlohmann::json::array();
      for (const JournalKeeper& k : keepers) names.push_back(k.device);
      return HttpResponse::Json(200, nlohmann::json{{"instance", p[2]}, {"keepers", names}}.dump());
    }
    if (p.size() == 4 && p[3] == "checkpoint" && req.method == "POST") {
      Result<Agent::JournalCheckpointReport> r = agent->JournalCheckpoint(p[2]);
      if (!r.ok()) return ErrorResponse(r.status());
      // "keepers": those that have the full record; "failed": those that did not take it
      // (they dropped out of the instance's keepers).
      nlohmann::json failed = nlohmann::json::array();
      for (const auto& [device, st] : r->failed) {
        failed.push_back({{"device", device},
                          {"code", StatusCodeName(st.code())},
                          {"error", std::string(st.message())}});
      }
      return HttpResponse::Json(200, nlohmann::json{{"instance", p[2]},
                                                    {"seq", r->seq},
                                                    {"bytes", r->bytes},
                                                    {"keepers", r->keepers},
                                                    {"failed", failed}}
                                         .dump());
    }
    if (p.size() == 4 && p[3] == "journal" && req.method == "POST") {
      // ?base=SEQ: the state is the base checkpoint that covers records up to SEQ; the
      // body: the records after it (GET /v1/journals/ID?after=SEQ on the keeper).
      const uint64_t base = std::strtoull(std::string(req.Query("base")).c_str(), nullptr, 10);
      Result<Agent::ReplayReport> r = agent->ReplayJournal(p[2], base, req.body);
      if (!r.ok()) return ErrorResponse(r.status());
      TERN_LOG(INFO) << "replayed " << r->records << " journal records into " << p[2]
                     << " (now at record " << r->seq << ")";
      return HttpResponse::Json(200, nlohmann::json{{"instance", p[2]},
                                                    {"records", r->records},
                                                    {"seq", r->seq},
                                                    {"ignored_bytes", r->ignored_bytes},
                                                    {"dedup_entries", r->dedup_entries}}
                                         .dump());
    }
    if (p.size() == 4 && p[3] == "snapshot" && req.method == "PUT") {
      Result<wasm::Snapshot> snap = wasm::DecodeSnapshot(req.body);
      if (!snap.ok()) {
        // A damaged upload is the caller's input to fix, whatever the decoder calls it.
        return ErrorResponse(InvalidArgumentError(
            fmt::format("the uploaded snapshot is not valid: {}", snap.status().message())));
      }
      Status s = agent->Restore(p[2], *snap);
      if (!s.ok()) return ErrorResponse(s);
      TERN_LOG(INFO) << "restored " << p[2] << " from a " << req.body.size() << " byte snapshot";
      return HttpResponse::Json(
          200, nlohmann::json{{"restored", p[2]}, {"pages", snap->pages()}}.dump());
    }
    return ErrorResponse(NotFoundError(fmt::format("no route {} {}", req.method, req.path)));
  }
};

AgentServer::AgentServer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

Result<std::unique_ptr<AgentServer>> AgentServer::Start(Agent* agent,
                                                        const AgentServerOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->agent = agent;
  impl->options = options;
  impl->admin = std::make_unique<TaskThread>();
  impl->migrations = std::make_unique<TaskThread>();
  transport::EventLoopOptions lo;
  lo.busy_poll = std::chrono::microseconds(options.io_busy_poll_us);
  TERN_ASSIGN_OR_RETURN(impl->loop, transport::EventLoopThread::Create(lo));
  Impl* raw = impl.get();
  const std::string frame_where = fmt::format("frame port {}:{}", options.host, options.frame_port);
  if (options.tcp_serving == TcpServing::kLoop) {
    transport::FrameServerOptions fo;
    fo.host = options.host;
    fo.port = options.frame_port;
    fo.max_connections = options.max_frame_connections;
    fo.connection.max_payload_bytes = options.tcp_limits.max_payload_bytes;
    fo.connection.limits.max_output_bytes = options.tcp_limits.max_output_bytes;
    fo.connection.limits.pause_reading_output_bytes =
        options.tcp_limits.pause_reading_output_bytes;
    fo.connection.limits.linger = std::chrono::nanoseconds(options.tcp_limits.linger_ns);
    fo.connection.date_frames = true;  // the deadline and latency count the wait in the socket
    auto frames = transport::FrameServer::Start(
        impl->loop->loop(), fo,
        [raw](transport::FrameConnection* c, Frame f) { raw->OnFrame(c, std::move(f)); });
    if (!frames.ok()) return frames.status().WithPrefix(frame_where);
    impl->frames = std::move(*frames);
  } else {
    // Worker serving dates reads itself (Agent::AdoptTcpConnection).
    transport::KeepReceiveTimestampsOn();
    auto listener = transport::TcpListener::Listen(options.host, options.frame_port);
    if (!listener.ok()) return listener.status().WithPrefix(frame_where);
    impl->listener = std::move(*listener);
    TERN_RETURN_IF_ERROR(impl->listener->StartAccepting(
        impl->loop->loop(), [raw](transport::UniqueFd fd) { raw->OnTcpAccept(std::move(fd)); }));
  }
  transport::HttpServerOptions ho;
  ho.host = options.host;
  ho.port = options.admin_port;
  auto http = transport::HttpServer::Start(impl->loop->loop(), ho, impl->Routes());
  if (!http.ok()) {
    return http.status().WithPrefix(
        fmt::format("admin port {}:{}", options.host, options.admin_port));
  }
  impl->http = std::move(*http);
  if (!options.shm_path.empty()) {
    auto shm = transport::ShmListener::Listen(options.shm_path);
    if (!shm.ok()) return shm.status().WithPrefix("shared-memory socket " + options.shm_path);
    impl->shm = std::move(*shm);
    TERN_RETURN_IF_ERROR(impl->loop->loop()->AddFd(impl->shm->fd(), EPOLLIN,
                                                   [raw](uint32_t) { raw->OnShmReadable(); }));
  }
  agent->SetAddresses(fmt::format("{}:{}", options.host == "0.0.0.0" ? "127.0.0.1" : options.host,
                                  impl->frame_port()),
                      options.shm_path);
  impl->loop->Start();
  return std::unique_ptr<AgentServer>(new AgentServer(std::move(impl)));
}

AgentServer::~AgentServer() {
  // 1. Stop the I/O loop: no handler runs any more, so nothing reaches `admin` or the
  //    agent from the network. 2. Finish admin work and let the workers drain; their
  //    replies are posted to the stopped loop and dropped with it (the loop object lives
  //    until the end); workers close the TCP connections they own. 3. Close the sockets
  //    (allowed once the loop is not running).
  impl_->loop->Stop();
  impl_->admin.reset();
  impl_->migrations.reset();
  impl_->agent->Shutdown();
  impl_->http.reset();
  impl_->frames.reset();
  impl_->listener.reset();
  if (impl_->shm) impl_->loop->loop()->RemoveFd(impl_->shm->fd());
  impl_->shm.reset();
}

uint16_t AgentServer::frame_port() const { return impl_->frame_port(); }
uint16_t AgentServer::admin_port() const { return impl_->http->port(); }

}  // namespace tern::agent
