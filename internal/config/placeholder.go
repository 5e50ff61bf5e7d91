package config

import (
	"net"
	"strings"

	"github.com/peerport/peerport/internal/secure"
)

// The example values of config.example.yaml, which `install.sh --service
// agent` also writes as the starter agent.yaml. A file still holding one was
// copied and not yet edited: it would run, and fail later and far from the
// cause (a broker that never answers, a peer that never comes online), so it
// is refused at load instead. TestExampleConfig keeps them in step with the
// example.
const (
	exampleBrokerHost  = "broker.example.com"
	exampleBrokerToken = "REPLACE-WITH-TOKEN"
	// The example shows a ticket cut short ("pp1c5rhe...ydam..."): someone who
	// uncomments it gets this prefix.
	exampleTicketPrefix = "pp1c5rhe33lmvzc4zlymfwxa3dffzrw63j2g4ydam"
	// The agent IDs of the example's allow and peer.
	exampleAllowID = "3l45erchgr4kzn4ljj4pp5udzxumb256n72qsbuhxnvqbd4tjsoq"
	examplePeerID  = "g23hqnv6c3zykd3yhxdqsxeyab6yzejxjh6otkd3zmsejsazdtya"
)

// exampleBroker reports whether u is the example's broker URL, by its host or
// its token; either left in place means the URL was not replaced.
func exampleBroker(u secure.BrokerURL) bool {
	host, _, err := net.SplitHostPort(u.Addr)
	if err != nil {
		host = u.Addr
	}
	return strings.EqualFold(strings.TrimSuffix(host, "."), exampleBrokerHost) || strings.EqualFold(u.Token, exampleBrokerToken)
}

func exampleTicket(t string) bool {
	return strings.HasPrefix(strings.ToLower(strings.TrimSpace(t)), exampleTicketPrefix)
}

func exampleAgentID(id string) bool {
	id = strings.ToLower(strings.TrimSpace(id))
	return id == exampleAllowID || id == examplePeerID
}
