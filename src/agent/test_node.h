// A real agent with its network front (frame and admin servers on 127.0.0.1, any free
// ports) in the test process: what the multi-agent tests (migration_test, durable_test)
// start. Test-only; header-only.
#pragma once

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "agent/agent.h"
#include "agent/agent_server.h"
#include "testing/test_env.h"

namespace tern::agent {

struct TestNode {
  std::unique_ptr<Agent> agent;
  std::unique_ptr<AgentServer> server;
  std::string tcp;  // its frame address

  // `shm_path`: the agent's shared-memory socket ("" = none), which same-host
  // migrations into it use too (its `.mig` sibling).
  static std::unique_ptr<TestNode> Start(const AgentOptions& o, const std::string& shm_path = "") {
    auto n = std::make_unique<TestNode>();
    Result<std::unique_ptr<Agent>> a = Agent::Create(o, tern::testing::SharedEngine());
    EXPECT_TRUE(a.ok()) << a.status();
    n->agent = std::move(*a);
    AgentServerOptions so;
    so.frame_port = 0;
    so.admin_port = 0;
    so.shm_path = shm_path;
    Result<std::unique_ptr<AgentServer>> srv = AgentServer::Start(n->agent.get(), so);
    EXPECT_TRUE(srv.ok()) << srv.status();
    n->server = std::move(*srv);
    n->tcp = n->agent->options().tcp_address;
    return n;
  }
  // The agent dies (its instances and their memory with it).
  void Stop() {
    server.reset();
    agent.reset();
  }
};

}  // namespace tern::agent
