// HTTP/1.1 POST over a persistent loopback connection, for the etcd gateway driver.
#include "http_client.h"

#include <cctype>
#include <charconv>

namespace djinn::lease_bench {

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

Result<HttpConnection> HttpConnection::connect(uint16_t port, std::chrono::milliseconds timeout) {
  Result<TcpConnection> conn = TcpConnection::connect_loopback(port, timeout);
  if (!conn.ok()) return conn.status();
  return HttpConnection(std::move(conn).value(), port);
}

Result<HttpResponse> HttpConnection::post(std::string_view path, std::string_view body) {
  request_.clear();
  request_.append("POST ").append(path).append(" HTTP/1.1\r\nHost: 127.0.0.1:").append(std::to_string(port_));
  request_.append("\r\nContent-Type: application/json\r\nContent-Length: ").append(std::to_string(body.size()));
  request_.append("\r\n\r\n").append(body);
  if (!conn_.write_all(request_)) return unavailable("HTTP: cannot send the request");

  auto status_line = conn_.read_until("\r\n");
  if (!status_line) return unavailable("HTTP: connection closed before the status line");
  HttpResponse response;
  // "HTTP/1.1 200 OK"
  std::string_view sl = *status_line;
  if (sl.size() < 12 || std::from_chars(sl.data() + 9, sl.data() + 12, response.status).ec != std::errc()) {
    return unavailable("HTTP: bad status line: " + std::string(sl));
  }
  size_t content_length = 0;
  bool chunked = false;
  for (;;) {
    auto line = conn_.read_until("\r\n");
    if (!line) return unavailable("HTTP: connection closed in the headers");
    if (line->empty()) break;
    if (header_is(*line, "content-length")) {
      std::string_view v = header_value(*line);
      std::from_chars(v.data(), v.data() + v.size(), content_length);
    } else if (header_is(*line, "transfer-encoding")) {
      chunked = header_value(*line).find("chunked") != std::string_view::npos;
    }
  }
  if (chunked) {
    DJINN_RETURN_IF_ERROR(read_body_chunked(response.body));
  } else if (content_length > 0) {
    auto data = conn_.read_exact(content_length);
    if (!data) return unavailable("HTTP: connection closed in the body");
    response.body.assign(*data);
  }
  return response;
}

Status HttpConnection::read_body_chunked(std::string& body) {
  for (;;) {
    auto size_line = conn_.read_until("\r\n");
    if (!size_line) return unavailable("HTTP: connection closed in a chunk size");
    size_t size = 0;
    std::from_chars(size_line->data(), size_line->data() + size_line->size(), size, 16);
    if (size == 0) {
      // Trailers, if any, end with an empty line.
      for (;;) {
        auto trailer = conn_.read_until("\r\n");
        if (!trailer) return unavailable("HTTP: connection closed in the trailers");
        if (trailer->empty()) return Status::Ok();
      }
    }
    auto data = conn_.read_exact(size + 2);  // the chunk and its CRLF
    if (!data) return unavailable("HTTP: connection closed in a chunk");
    body.append(data->substr(0, size));
  }
}

}  // namespace djinn::lease_bench
