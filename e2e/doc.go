// Package e2e tests the built agent and broker binaries as a user runs them:
// real processes talking over loopback (and, in later tests, the NAT lab).
package e2e
