// Replies completed together wake each server's I/O thread once.
#pragma once

namespace djinn::rpc {

// While one is alive on a thread, replies that thread makes through Responders are queued for
// their servers' I/O threads without waking them; the outermost one's destructor wakes each
// server that got a reply, once. For code that completes many calls at once (a group commit's
// completions): woken per reply, an I/O thread on another core wakes for the first reply, sends
// it alone, and sleeps again before the next arrives, a cross-core wake-up per reply. Replies
// other threads queue for the same servers meanwhile wait for the scope's end too, so nothing
// inside it may block on a call to such a server.
class ReplyBatch {
 public:
  ReplyBatch();
  ~ReplyBatch();
  ReplyBatch(const ReplyBatch&) = delete;
  ReplyBatch& operator=(const ReplyBatch&) = delete;
};

}  // namespace djinn::rpc
