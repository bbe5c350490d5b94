// HTTP/1.1 POST over a persistent loopback connection, for the etcd gateway driver.
#include "http_client.h"

#include <cctype>
#include <charconv>

namespace djinn::bench {

namespace {

bool header_is(std::string_view line, std::string_view name) {
  if (line.size() <= name.size() || line[name.size()] != ':') return false;
  for (size_t i = 0; i < name.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(line[i])) != std::tolower(static_cast<unsigned char>(name[i]))) {
      return false;
    }
  }
  return true;
}

std::string_view header_value(std::string_view line) {
  std::string_view v = line.substr(line.find(':') + 1);
  while (!v.empty() && v.front() == ' ') v.remove_prefix(1);
  return v;
}

}  // namespace

djinn::Result<HttpConnection> HttpConnection::connect(uint16_t port, std::chrono::milliseconds timeout) {
  djinn::Result<TcpConnection> conn = TcpConnection::connect_loopback(port, timeout);
  if (!conn.ok()) return conn.status();
  return HttpConnection(std::move(conn).value(), port);
}

djinn::Result<HttpResponse> HttpConnection::post(std::string_view path, std::string_view body) {
  DJINN_RETURN_IF_ERROR(send_post(path, body));
  return read_response();
}

Status HttpConnection::send_post(std::string_view path, std::string_view body) {
  request_.clear();
  request_.append("POST ").append(path).append(" HTTP/1.1\r\nHost: 127.0.0.1:").append(std::to_string(port_));
  request_.append("\r\nContent-Type: application/json\r\nContent-Length: ").append(std::to_string(body.size()));
  request_.append("\r\n\r\n").append(body);
  if (!conn_.write_all(request_)) return unavailable("HTTP: cannot send the request");
  return Status::Ok();
}

djinn::Result<HttpConnection::Head> HttpConnection::read_head() {
  auto status_line = conn_.read_until("\r\n");
  if (!status_line) return unavailable("HTTP: connection closed before the status line");
  Head head;
  // "HTTP/1.1 200 OK"
  std::string_view sl = *status_line;
  if (sl.size() < 12 || std::from_chars(sl.data() + 9, sl.data() + 12, head.status).ec != std::errc()) {
    return unavailable("HTTP: bad status line: " + std::string(sl));
  }
  for (;;) {
    auto line = conn_.read_until("\r\n");
    if (!line) return unavailable("HTTP: connection closed in the headers");
    if (line->empty()) break;
    if (header_is(*line, "content-length")) {
      std::string_view v = header_value(*line);
      std::from_chars(v.data(), v.data() + v.size(), head.content_length);
    } else if (header_is(*line, "transfer-encoding")) {
      head.chunked = header_value(*line).find("chunked") != std::string_view::npos;
    }
  }
  return head;
}

djinn::Result<HttpResponse> HttpConnection::read_response() {
  djinn::Result<Head> head = read_head();
  if (!head.ok()) return head.status();
  HttpResponse response;
  response.status = head->status;
  if (head->chunked) {
    for (;;) {
      djinn::Result<bool> more = read_one_chunk(response.body);
      if (!more.ok()) return more.status();
      if (!*more) break;
    }
  } else if (head->content_length > 0) {
    auto data = conn_.read_exact(head->content_length);
    if (!data) return unavailable("HTTP: connection closed in the body");
    response.body.assign(*data);
  }
  return response;
}

djinn::Result<bool> HttpConnection::read_one_chunk(std::string& body) {
  auto size_line = conn_.read_until("\r\n");
  if (!size_line) return unavailable("HTTP: connection closed in a chunk size");
  size_t size = 0;
  std::from_chars(size_line->data(), size_line->data() + size_line->size(), size, 16);
  if (size == 0) {
    // Trailers, if any, end with an empty line.
    for (;;) {
      auto trailer = conn_.read_until("\r\n");
      if (!trailer) return unavailable("HTTP: connection closed in the trailers");
      if (trailer->empty()) return false;
    }
  }
  auto data = conn_.read_exact(size + 2);  // the chunk and its CRLF
  if (!data) return unavailable("HTTP: connection closed in a chunk");
  body.append(data->substr(0, size));
  return true;
}

djinn::Result<int> HttpConnection::open_stream(std::string_view path, std::string_view body) {
  DJINN_RETURN_IF_ERROR(send_post(path, body));
  djinn::Result<Head> head = read_head();
  if (!head.ok()) return head.status();
  if (!head->chunked) {
    // Not a stream: an error answer with a plain body. Read it so the connection stays in step.
    if (head->content_length > 0) conn_.read_exact(head->content_length);
    return unavailable("HTTP: the answer is not a stream (status " + std::to_string(head->status) + ")");
  }
  return head->status;
}

djinn::Result<bool> HttpConnection::read_chunk(std::string& out, std::chrono::milliseconds wait) {
  if (!conn_.wait_readable(wait)) return false;
  djinn::Result<bool> more = read_one_chunk(out);
  if (!more.ok()) return more.status();
  if (!*more) return unavailable("HTTP: the stream ended");
  return true;
}

}  // namespace djinn::bench
