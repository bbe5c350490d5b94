// The lease policy flags of every daemon that embeds a landlord (--max-lease, --default-lease,
// --allow-forever where FOREVER may be allowed), checked the same way everywhere.
#pragma once

#include "djinn/core/config.h"
#include "djinn/core/status.h"
#include "djinn/lease/landlord.h"

namespace djinn::lease {

// `what` names the leases in the help text ("lease", "registration lease").
void add_policy_flags(Config& cfg, const std::string& what, bool forever_flag);
// The policy the parsed flags ask for; INVALID_ARGUMENT naming the flag otherwise.
Result<Policy> policy_from_flags(const Config& cfg, bool forever_flag);

}  // namespace djinn::lease
