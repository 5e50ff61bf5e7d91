package dashboard

import (
	"crypto/subtle"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/sirupsen/logrus"
)

// securityHeaders go on every answer, refusals included. There is no
// Access-Control-* header anywhere: a page of another origin cannot read
// an answer even when its request got through.
var securityHeaders = map[string]string{
	"Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; " +
		"connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
	"X-Frame-Options":        "DENY",
	"X-Content-Type-Options": "nosniff",
	"Referrer-Policy":        "no-referrer",
	"Cache-Control":          "no-store",
}

// cookieName carries the port: cookies are per host, not per port, and two
// agents' pages on 127.0.0.1 must not overwrite each other's token.
func (s *Server) cookieName() string {
	return "peerport_dashboard_" + strconv.Itoa(s.ln.Addr().(*net.TCPAddr).Port)
}

// guard refuses, in this order: a Host that is not our address (a DNS
// rebinding page reaches us under its own name), an Origin of another
// page, a fetch from another page, and a request with neither the token
// nor its cookie.
func (s *Server) guard(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		for k, v := range securityHeaders {
			w.Header().Set(k, v)
		}
		if !s.hosts[strings.ToLower(r.Host)] {
			s.refuse(w, r, http.StatusForbidden, "Host "+strconv.Quote(r.Host)+" refused: open "+s.base()+"/")
			return
		}
		if o := r.Header.Get("Origin"); o != "" && !s.sameOrigin(o) {
			s.refuse(w, r, http.StatusForbidden, "Origin "+strconv.Quote(o)+" refused: the dashboard answers its own page only")
			return
		}
		// Sec-Fetch-Site covers what carries no Origin (an <img>, a
		// script tag), also from a page on another loopback port, which is
		// same-site and so gets the SameSite=Strict cookie. A navigation
		// from elsewhere may still open the page, which then needs the
		// token like any other.
		if site := r.Header.Get("Sec-Fetch-Site"); site != "" && site != "same-origin" && site != "none" && r.Header.Get("Sec-Fetch-Mode") != "navigate" {
			s.refuse(w, r, http.StatusForbidden, site+" request refused: the dashboard answers its own page only")
			return
		}
		if tok := r.URL.Query().Get("token"); tok != "" {
			if !s.tokenOK(tok) {
				s.refuse(w, r, http.StatusUnauthorized, "wrong token: open the URL the agent logged, or `agent status --json` shows it as dashboard")
				return
			}
			if r.URL.Path == "/" {
				// The token leaves the address bar (and the history);
				// from now on the cookie carries it.
				http.SetCookie(w, &http.Cookie{Name: s.cookieName(), Value: s.token, Path: "/",
					HttpOnly: true, SameSite: http.SameSiteStrictMode})
				http.Redirect(w, r, "/", http.StatusSeeOther)
				return
			}
			next.ServeHTTP(w, r)
			return
		}
		if c, err := r.Cookie(s.cookieName()); err != nil || !s.tokenOK(c.Value) {
			s.refuse(w, r, http.StatusUnauthorized, "no token: open the URL the agent logged (…/?token=…), or `agent status --json` shows it as dashboard")
			return
		}
		next.ServeHTTP(w, r)
	})
}

func (s *Server) tokenOK(tok string) bool {
	return subtle.ConstantTimeCompare([]byte(tok), []byte(s.token)) == 1
}

func (s *Server) base() string { return "http://" + s.ln.Addr().String() }

// sameOrigin says whether an Origin header names this server under one of
// its host names.
func (s *Server) sameOrigin(origin string) bool {
	u, err := url.Parse(origin)
	return err == nil && u.Scheme == "http" && u.Path == "" && s.hosts[strings.ToLower(u.Host)]
}

func (s *Server) refuse(w http.ResponseWriter, r *http.Request, code int, why string) {
	s.log.WithFields(logrus.Fields{"path": r.URL.Path, "remote": r.RemoteAddr, "code": code}).Debug("dashboard: " + why)
	http.Error(w, "dashboard: "+why, code)
}
