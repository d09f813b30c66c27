#include "testing/backend/http_head.h"

#include "gtest/gtest.h"

namespace rematcher::backend {
namespace {

TEST(HttpHeadTest, Request) {
  auto r = ParseRequestHead(
      "POST /r?size=10&seed=3 HTTP/1.1\r\nHost: x\r\nContent-Length: 5");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->method, "POST");
  EXPECT_EQ(r->path, "/r");
  EXPECT_EQ(r->query, "size=10&seed=3");
  EXPECT_EQ(r->content_length, 5);
  EXPECT_TRUE(r->keep_alive);
  EXPECT_EQ(*QueryUint(r->query, "size", 0), 10u);
  EXPECT_EQ(*QueryUint(r->query, "seed", 0), 3u);
  EXPECT_EQ(*QueryUint(r->query, "delay_us", 9), 9u);
  EXPECT_FALSE(QueryUint("size=-1", "size", 0).ok());
  EXPECT_FALSE(QueryUint("size=", "size", 0).ok());
  EXPECT_FALSE(QueryUint("size=1x", "size", 0).ok());
}

TEST(HttpHeadTest, RequestConnection) {
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/1.1\r\nConnection: close")->keep_alive);
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/1.0")->keep_alive);
  EXPECT_TRUE(
      ParseRequestHead("GET / HTTP/1.0\r\nconnection: Keep-Alive")->keep_alive);
}

TEST(HttpHeadTest, MalformedRequests) {
  EXPECT_FALSE(ParseRequestHead("").ok());
  EXPECT_FALSE(ParseRequestHead("GET /").ok());
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/2.0").ok());
  EXPECT_FALSE(ParseRequestHead("GET r HTTP/1.1").ok());
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/1.1\r\nnocolon").ok());
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/1.1\r\nContent-Length: -1").ok());
  EXPECT_FALSE(ParseRequestHead("GET / HTTP/1.1\r\nContent-Length: 1\r\n"
                                "Content-Length: 2")
                   .ok());
  EXPECT_FALSE(
      ParseRequestHead("POST / HTTP/1.1\r\nTransfer-Encoding: chunked").ok());
}

TEST(HttpHeadTest, Response) {
  auto r = ParseResponseHead(
      "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nX-Backend: b1\r\n"
      "Connection: close");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->status, 200);
  EXPECT_EQ(r->content_length, 3);
  EXPECT_FALSE(r->keep_alive);
  EXPECT_EQ(r->Find("x-backend"), "b1");
  EXPECT_EQ(r->Find("X-Missing"), "");
  EXPECT_EQ(ParseResponseHead("HTTP/1.1 404 Not Found")->status, 404);
  EXPECT_FALSE(ParseResponseHead("HTTP/1.1 2000 OK").ok());
  EXPECT_FALSE(ParseResponseHead("garbage").ok());
}

}  // namespace
}  // namespace rematcher::backend
