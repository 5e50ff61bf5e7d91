// Package proxy dials TCP through an HTTP CONNECT proxy (RFC 9110 §9.3.6), for
// agents on networks where only an HTTP proxy lets TCP out (DESIGN §3, "Paths":
// everything an agent sends to the broker goes through the proxy when one is
// configured).
//
// It owns three things: choosing the proxy for a destination (Config: an
// explicit URL, else HTTPS_PROXY / ALL_PROXY with NO_PROXY), the CONNECT
// exchange (Dialer), and the errors a user sees when the proxy says no
// (errors.go), which name the proxy with any password redacted and say what to
// do next. It does not own retries, logging or the TLS to the broker: the
// connection it returns is a plain byte stream to the destination.
//
// The exchange on the wire, once the TCP connection to the proxy is up (for an
// https:// proxy URL, inside a TLS session with the proxy itself):
//
//	agent                                             proxy            broker
//	  |--- CONNECT broker.example.com:443 HTTP/1.1 ---->|                 |
//	  |    Host: broker.example.com:443                 |                 |
//	  |    User-Agent: peerport                         |                 |
//	  |    Proxy-Authorization: Basic base64(user:pass) |  (only with     |
//	  |    (empty line)                                 |   user info)    |
//	  |                                                 |--- TCP SYN ---->|
//	  |<-- HTTP/1.1 200 Connection established ---------|                 |
//	  |    (headers, ignored; empty line)               |                 |
//	  |<================= raw bytes both ways, no framing ================>|
//
// Any 2xx answer opens the tunnel (RFC 9110 §15.3); a Content-Length or
// Transfer-Encoding on it is ignored, as the RFC requires. The answer's header
// is read through a bounded buffer (64 KiB); bytes the proxy sent right after
// the header already belong to the tunnel and are the first ones the returned
// connection reads. Every other answer ends the dial with an *Error: 407
// (ErrProxyAuth; also 401, which tinyproxy sends for a wrong password),
// anything else (ErrProxyRefused: 403 often means the proxy allows CONNECT
// only to port 443), or an answer that is not HTTP, is cut short or too long
// (ErrBadProxyResponse). The context bounds the TCP dial and the whole
// exchange; the connection returned carries no deadline.
//
// After the 200 the proxy only copies bytes. If it drops the tunnel the
// connection simply reads EOF or a reset, like any TCP connection that dies;
// there is nothing proxy-specific to detect or to recover. Do not count on a
// half-close (CloseWrite) getting through: tinyproxy, for one, ends the whole
// tunnel when the client's FIN arrives.
package proxy
