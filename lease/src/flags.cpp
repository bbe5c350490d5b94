#include "djinn/lease/flags.h"

namespace djinn::lease {

void add_policy_flags(Config& cfg, const std::string& what, bool forever_flag) {
  cfg.add_duration("max-lease", std::chrono::minutes(5), "longest " + what + " granted; longer requests get this");
  cfg.add_duration("default-lease", std::chrono::seconds(30), what + " granted for ANY (-1)");
  if (forever_flag) cfg.add_bool("allow-forever", false, "grant FOREVER (-2) leases; refused otherwise");
}

Result<Policy> policy_from_flags(const Config& cfg, bool forever_flag) {
  Policy policy;
  policy.max_duration = cfg.get_duration("max-lease");
  policy.default_duration = cfg.get_duration("default-lease");
  if (forever_flag) policy.allow_forever = cfg.get_bool("allow-forever");
  if (policy.max_duration.count() <= 0) return invalid_argument("--max-lease must be > 0");
  if (policy.default_duration.count() <= 0 || policy.default_duration > policy.max_duration) {
    return invalid_argument("--default-lease " + std::to_string(policy.default_duration.count()) +
                            " ms: must be > 0 and at most --max-lease (" +
                            std::to_string(policy.max_duration.count()) + " ms)");
  }
  return policy;
}

}  // namespace djinn::lease
