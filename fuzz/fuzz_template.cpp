// libFuzzer target for the model decoders and template matching: the input is a Cap'n Proto flat
// message whose root is proto::FuzzTemplateCase (core/proto/fuzz.capnp); every part is decoded,
// validated and matched. Seeds: fuzz/corpus/template/.
#include <capnp/message.h>
#include <capnp/serialize.h>
#include <kj/array.h>
#include <kj/exception.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <optional>

#include "djinn/core/model.h"
#include "djinn/core/model_capnp.h"
#include "djinn/proto/fuzz.capnp.h"

namespace {

// Anything from_capnp accepts must satisfy validate(); a disagreement is a bug worth a crash.
template <class T>
void require_valid(const djinn::Result<T>& r) {
  if (r.ok() && !djinn::validate(*r).ok()) std::abort();
}

// The root's getters follow pointers of the hostile message and may throw; from_capnp itself
// must not, so only the getter runs inside the try.
template <class Get>
auto child(Get get) -> std::optional<decltype(get())> {
  try {
    return get();
  } catch (const kj::Exception&) {
    return std::nullopt;
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  // FlatArrayMessageReader needs word alignment; the fuzzer's buffer has none.
  auto words = kj::heapArray<capnp::word>((size + sizeof(capnp::word) - 1) / sizeof(capnp::word));
  std::memset(words.begin(), 0, words.size() * sizeof(capnp::word));
  if (size > 0) std::memcpy(words.begin(), data, size);

  capnp::ReaderOptions options;
  options.traversalLimitInWords = 1 << 20;
  options.nestingLimit = 32;

  std::optional<capnp::FlatArrayMessageReader> reader;
  std::optional<djinn::proto::FuzzTemplateCase::Reader> root;
  try {
    reader.emplace(words.asPtr(), options);
    root = reader->getRoot<djinn::proto::FuzzTemplateCase>();
  } catch (const kj::Exception&) {
    return 0;
  }

  auto tmpl_reader = child([&] { return root->getTemplate(); });
  auto entry_reader = child([&] { return root->getEntry(); });
  auto stmpl_reader = child([&] { return root->getServiceTemplate(); });
  auto item_reader = child([&] { return root->getServiceItem(); });

  std::optional<djinn::Result<djinn::Template>> tmpl;
  std::optional<djinn::Result<djinn::Entry>> entry;
  if (tmpl_reader) tmpl = djinn::from_capnp(*tmpl_reader);
  if (entry_reader) entry = djinn::from_capnp(*entry_reader);
  if (tmpl) require_valid(*tmpl);
  if (entry) require_valid(*entry);
  if (tmpl && entry && tmpl->ok() && entry->ok()) {
    bool m = djinn::matches(**tmpl, **entry);
    // An entry always matches the template of its own type and fields.
    djinn::Template own{(*entry)->type, (*entry)->fields};
    if (!djinn::matches(own, **entry)) std::abort();
    (void)m;
  }

  std::optional<djinn::Result<djinn::ServiceTemplate>> stmpl;
  std::optional<djinn::Result<djinn::ServiceItem>> item;
  if (stmpl_reader) stmpl = djinn::from_capnp(*stmpl_reader);
  if (item_reader) item = djinn::from_capnp(*item_reader);
  if (stmpl) require_valid(*stmpl);
  if (item) require_valid(*item);
  if (stmpl && item && stmpl->ok() && item->ok()) {
    (void)djinn::matches(**stmpl, **item);
    djinn::ServiceTemplate own{(*item)->service_id, (*item)->interface_types, {}};
    if (!djinn::matches(own, **item)) std::abort();
  }
  return 0;
}
