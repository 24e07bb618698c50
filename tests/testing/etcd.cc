#include "testing/etcd.h"

#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "core/clock.h"
#include "core/file.h"
#include "transport/http.h"

namespace tern::testing {

bool EtcdProcess::Available() { return ::access(kEtcdBinary, X_OK) == 0; }

Result<std::unique_ptr<EtcdProcess>> EtcdProcess::Start(const std::string& dir) {
  if (!Available()) {
    return NotFoundError(std::string(kEtcdBinary) +
                         " is not installed (Debian package etcd-server)");
  }
  TERN_RETURN_IF_ERROR(MakeDirs(dir));
  Status last;
  for (int attempt = 0; attempt < 3; ++attempt) {  // a port may be taken meanwhile
    TERN_ASSIGN_OR_RETURN(uint16_t client, transport::PickFreeLoopbackPort());
    TERN_ASSIGN_OR_RETURN(uint16_t peer, transport::PickFreeLoopbackPort());
    if (client == peer) continue;
    std::unique_ptr<EtcdProcess> e(new EtcdProcess(dir, client, peer));
    last = e->Launch();
    if (last.ok()) return e;
  }
  return last;
}

EtcdProcess::~EtcdProcess() {
  if (child_ != nullptr) {
    Status s = Stop();
    (void)s;
  }
}

Status EtcdProcess::Launch() {
  const std::string client = "http://127.0.0.1:" + std::to_string(client_port_);
  const std::string peer = "http://127.0.0.1:" + std::to_string(peer_port_);
  std::vector<std::string> argv = {kEtcdBinary,
                                   "--name=tern-test",
                                   "--data-dir=" + JoinPath(dir_, "etcd.data"),
                                   "--listen-client-urls=" + client,
                                   "--advertise-client-urls=" + client,
                                   "--listen-peer-urls=" + peer,
                                   "--initial-advertise-peer-urls=" + peer,
                                   "--initial-cluster=tern-test=" + peer,
                                   "--heartbeat-interval=50",
                                   "--election-timeout=500",
                                   "--log-level=error",
                                   "--max-request-bytes=8388608"};
  TERN_ASSIGN_OR_RETURN(child_, ChildProcess::Start(argv, JoinPath(dir_, "etcd.log")));
  Status s = WaitHealthy(std::chrono::seconds(15));
  if (!s.ok()) {
    child_.reset();  // SIGKILL
    return s.WithPrefix("etcd did not come up (see " + JoinPath(dir_, "etcd.log") + ")");
  }
  return Status::Ok();
}

Status EtcdProcess::WaitHealthy(std::chrono::milliseconds timeout) {
  const int64_t deadline = MonoNanos() + std::chrono::nanoseconds(timeout).count();
  Status last = UnavailableError("no answer yet");
  while (MonoNanos() < deadline) {
    Result<std::unique_ptr<transport::HttpClient>> c =
        transport::HttpClient::Connect("127.0.0.1", client_port_, std::chrono::milliseconds(500));
    if (c.ok()) {
      Result<transport::HttpClientResponse> r =
          (*c)->Request("GET", "/health", {}, {}, std::chrono::seconds(2));
      if (r.ok() && r->status == 200 && r->body.find("true") != std::string::npos) {
        return Status::Ok();
      }
      last = r.ok() ? UnavailableError("/health: " + r->body) : r.status();
    } else {
      last = c.status();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return DeadlineExceededError("etcd /health: " + last.ToString());
}

Status EtcdProcess::Kill() {
  if (child_ == nullptr) return FailedPreconditionError("etcd is not running");
  Result<int> r = child_->Stop(SIGKILL, std::chrono::seconds(5));
  child_.reset();
  return r.ok() ? Status::Ok() : r.status();
}

Status EtcdProcess::Stop() {
  if (child_ == nullptr) return FailedPreconditionError("etcd is not running");
  Result<int> r = child_->Stop(SIGTERM, std::chrono::seconds(5));
  child_.reset();  // SIGKILL if it did not exit
  return r.ok() ? Status::Ok() : r.status();
}

Status EtcdProcess::Restart() {
  if (child_ != nullptr) return FailedPreconditionError("etcd is still running");
  return Launch();
}

}  // namespace tern::testing
