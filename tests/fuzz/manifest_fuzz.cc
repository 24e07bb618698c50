// libFuzzer target: manifests and config files are user input; parsing must return a
// Status for anything, and an accepted manifest must round-trip through YAML.
#include <cstddef>
#include <cstdint>
#include <string>

#include "core/config.h"
#include "core/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string text(reinterpret_cast<const char*>(data), size);
  tern::Result<tern::Manifest> m = tern::ParseManifest(text, "fuzz");
  if (m.ok()) {
    tern::Result<tern::Manifest> again = tern::ParseManifest(tern::ManifestToYaml(*m), "again");
    if (!again.ok() || !(*again == *m)) __builtin_trap();
  }
  (void)tern::Config::Parse(text, "fuzz", {"device", "port"});
  return 0;
}
