// The djinn registrar's figures in bench-lookup. None is measured yet: each returns a sample
// marked not measured (null in the JSON) until its body drives the registrar's client.
#include "djinn_side.h"

namespace djinn::lookup_bench {

Result<std::unique_ptr<DjinnSide>> DjinnSide::start(const std::string& data_dir) {
  // Not started yet: the registrar is not part of the build. Start it here, its data in data_dir.
  return std::unique_ptr<DjinnSide>(new DjinnSide(data_dir));
}

DjinnSide::~DjinnSide() = default;

LoadSample DjinnSide::load(uint64_t) { return LoadSample::not_measured(); }

ThroughputSample DjinnSide::registrations(ItemCounter&, int, int, const Plan&) {
  return ThroughputSample::not_measured();
}

ThroughputSample DjinnSide::lookups(LookupKind, uint64_t, int, const Plan&) { return ThroughputSample::not_measured(); }

FanoutSample DjinnSide::fanout(const FanoutRun&, ItemCounter&, const Plan&) { return FanoutSample::not_measured(); }

std::vector<std::string> DjinnSide::notes() const {
  return {"djinn: the registrar's figures are not measured yet (null): its client is not part of the build"};
}

}  // namespace djinn::lookup_bench
