// The controller's web dashboard: one self-contained HTML page (CSS and vanilla JS
// inline, no external URLs) served at GET / and GET /dashboard. It polls the controller's
// own JSON API (GET /v1/cluster, GET /v1/topology, and the long-polled GET /v1/locations
// to refresh at once when an instance moves) and draws hosts → devices → instances and
// the recent events, highlighting migrations. Its render functions are pure (JSON in,
// HTML string out) so tests run them under node (see controller_test.cc).
#pragma once

#include <string_view>

namespace tern::controller {

// The page (static storage; UTF-8).
std::string_view DashboardHtml();

}  // namespace tern::controller
