package portmap

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeIGD is a UPnP IGD on 127.0.0.1: an SSDP responder answering unicast
// M-SEARCHes with a LOCATION, and an HTTP server with a root description
// (one WANIPConnection:1 service) and SOAP answers. Its connection status is
// Disconnected, as miniupnpd's is in the lab; nothing should care.
type fakeIGD struct {
	ssdp     net.PacketConn
	http     *httptest.Server
	location string // overrides the LOCATION sent, if set
	mu       sync.Mutex
	client   string // internal client GetSpecificPortMappingEntry reports; "" = the requester's
	conflict int    // AddPortMapping answers 718 this many times
	mappings map[string]string
	actions  []string
	wg       sync.WaitGroup
}

const rootDesc = `<?xml version="1.0"?>
<root xmlns="urn:schemas-upnp-org:device-1-0"><specVersion><major>1</major><minor>0</minor></specVersion>
<device><deviceType>urn:schemas-upnp-org:device:InternetGatewayDevice:1</deviceType><friendlyName>fake</friendlyName><UDN>uuid:1</UDN>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANDevice:1</deviceType><UDN>uuid:2</UDN>
<deviceList><device><deviceType>urn:schemas-upnp-org:device:WANConnectionDevice:1</deviceType><UDN>uuid:3</UDN>
<serviceList><service><serviceType>urn:schemas-upnp-org:service:WANIPConnection:1</serviceType><serviceId>urn:upnp-org:serviceId:WANIPConn1</serviceId>
<controlURL>/ctl/IPConn</controlURL><eventSubURL>/evt/IPConn</eventSubURL><SCPDURL>/WANIPCn.xml</SCPDURL></service></serviceList>
</device></deviceList></device></deviceList></device></root>`

var soapArg = regexp.MustCompile(`<(New[A-Za-z]+)>([^<]*)</`)

func newFakeIGD(t *testing.T) *fakeIGD {
	t.Helper()
	f := &fakeIGD{mappings: map[string]string{}}
	f.http = httptest.NewServer(http.HandlerFunc(f.serveHTTP))
	pc, err := net.ListenPacket("udp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f.ssdp = pc
	f.wg.Add(1)
	go f.serveSSDP()
	t.Cleanup(func() { pc.Close(); f.wg.Wait(); f.http.Close() })
	return f
}

func (f *fakeIGD) port() uint16 { return uint16(f.ssdp.LocalAddr().(*net.UDPAddr).Port) }

func (f *fakeIGD) serveSSDP() {
	defer f.wg.Done()
	buf := make([]byte, 2048)
	for {
		n, from, err := f.ssdp.ReadFrom(buf)
		if err != nil {
			return
		}
		req := string(buf[:n])
		if !strings.HasPrefix(req, "M-SEARCH * HTTP/1.1\r\n") || !strings.Contains(req, "InternetGatewayDevice:1") {
			continue
		}
		f.mu.Lock()
		loc := f.location
		f.mu.Unlock()
		if loc == "" {
			loc = f.http.URL + "/rootDesc.xml"
		}
		resp := "HTTP/1.1 200 OK\r\nCACHE-CONTROL: max-age=120\r\nST: urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\n" +
			"USN: uuid:1::urn:schemas-upnp-org:device:InternetGatewayDevice:1\r\nEXT:\r\nSERVER: fake UPnP/1.1\r\nLOCATION: " + loc + "\r\n\r\n"
		_, _ = f.ssdp.WriteTo([]byte(resp), from)
	}
}

func (f *fakeIGD) serveHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/rootDesc.xml" {
		w.Header().Set("Content-Type", "text/xml")
		io.WriteString(w, rootDesc)
		return
	}
	if r.URL.Path != "/ctl/IPConn" {
		http.NotFound(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	action := strings.Trim(r.Header.Get("SOAPAction"), `"`)
	action = action[strings.LastIndex(action, "#")+1:]
	args := map[string]string{}
	for _, m := range soapArg.FindAllStringSubmatch(string(body), -1) {
		args[m[1]] = m[2]
	}
	f.mu.Lock()
	f.actions = append(f.actions, action)
	out, code := "", 0
	switch action {
	case "GetStatusInfo":
		out = "<NewConnectionStatus>Disconnected</NewConnectionStatus><NewLastConnectionError>ERROR_NONE</NewLastConnectionError><NewUptime>0</NewUptime>"
	case "GetExternalIPAddress":
		out = "<NewExternalIPAddress>203.0.113.7</NewExternalIPAddress>"
	case "AddPortMapping":
		if f.conflict > 0 {
			f.conflict--
			code = 718
			break
		}
		f.mappings[args["NewExternalPort"]] = args["NewInternalClient"] + ":" + args["NewInternalPort"] + " " + args["NewLeaseDuration"]
	case "GetSpecificPortMappingEntry":
		m, ok := f.mappings[args["NewExternalPort"]]
		if !ok {
			code = 714
			break
		}
		var client, port, lease string
		fmt.Sscanf(strings.Replace(m, ":", " ", 1), "%s %s %s", &client, &port, &lease)
		if f.client != "" {
			client = f.client
		}
		out = "<NewInternalPort>" + port + "</NewInternalPort><NewInternalClient>" + client + "</NewInternalClient><NewEnabled>1</NewEnabled>" +
			"<NewPortMappingDescription>x</NewPortMappingDescription><NewLeaseDuration>" + lease + "</NewLeaseDuration>"
	case "DeletePortMapping":
		if _, ok := f.mappings[args["NewExternalPort"]]; !ok {
			code = 714
			break
		}
		delete(f.mappings, args["NewExternalPort"])
	default:
		code = 401
	}
	f.mu.Unlock()
	w.Header().Set("Content-Type", `text/xml; charset="utf-8"`)
	env := `<?xml version="1.0"?><s:Envelope xmlns:s="http://schemas.xmlsoap.org/soap/envelope/" s:encodingStyle="http://schemas.xmlsoap.org/soap/encoding/"><s:Body>`
	if code != 0 {
		w.WriteHeader(500)
		io.WriteString(w, env+`<s:Fault><faultcode>s:Client</faultcode><faultstring>UPnPError</faultstring><detail><UPnPError xmlns="urn:schemas-upnp-org:control-1-0"><errorCode>`+
			fmt.Sprint(code)+`</errorCode><errorDescription>fake error</errorDescription></UPnPError></detail></s:Fault></s:Body></s:Envelope>`)
		return
	}
	io.WriteString(w, env+`<u:`+action+`Response xmlns:u="urn:schemas-upnp-org:service:WANIPConnection:1">`+out+`</u:`+action+`Response></s:Body></s:Envelope>`)
}

// count is how many times action was asked for. A probe that lost the race
// is cancelled on the client's side while its request may still be served,
// so the server's record is read under its lock.
func (f *fakeIGD) count(action string) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, a := range f.actions {
		if a == action {
			n++
		}
	}
	return n
}

func (f *fakeIGD) table() map[string]string {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]string{}
	for k, v := range f.mappings {
		out[k] = v
	}
	return out
}

// TestUPnP maps through a fake IGD found by a unicast M-SEARCH to the
// gateway: a good gateway (which calls itself Disconnected) maps and the
// mapping is deleted on Close; a conflict moves to another port; a gateway
// whose table then names another internal client is refused with a log
// line; a LOCATION off the gateway is never fetched.
func TestUPnP(t *testing.T) {
	tests := []struct {
		name    string
		setup   func(f *fakeIGD)
		wantErr []error
		wantLog string
	}{
		{"good", func(*fakeIGD) {}, nil, ""},
		{"conflict", func(f *fakeIGD) { f.conflict = 1 }, nil, ""},
		{"other client", func(f *fakeIGD) { f.client = "10.9.9.9" }, []error{ErrNoMapping, ErrForeignMapping}, "refused a UPnP mapping for another host"},
		{"location elsewhere", func(f *fakeIGD) { f.location = "http://127.0.0.2:1/rootDesc.xml" }, []error{ErrNoMapping, ErrForeignMapping}, "ignored an SSDP answer"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f := newFakeIGD(t)
			f.mu.Lock()
			tt.setup(f)
			f.mu.Unlock()
			opts, lines := loopOptions(t, 0, f.port(), UPnP)
			c, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			lease, err := c.Map(context.Background(), 4242)
			if tt.wantErr != nil {
				if err == nil {
					lease.Close()
					t.Fatalf("mapped %v, want an error", lease.Current())
				}
				for _, want := range tt.wantErr {
					if !errors.Is(err, want) {
						t.Errorf("error %v\nis not %v", err, want)
					}
				}
				if !lines.has(tt.wantLog) {
					t.Errorf("no log line with %q:\n%s", tt.wantLog, lines)
				}
				if tt.name == "other client" && len(f.table()) != 1 {
					t.Errorf("another host's mapping was touched: %v", f.table())
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := lease.Current()
			if m.Protocol != UPnP || m.External.Addr() != extIP || m.Internal.Port() != 4242 || m.Lease != 2*time.Hour {
				t.Errorf("mapping %v", m)
			}
			if tt.name == "good" && m.External.Port() != 4242 {
				t.Errorf("external port %d, want the internal one", m.External.Port())
			}
			if got := f.table()[fmt.Sprint(m.External.Port())]; got != "127.0.0.1:4242 7200" {
				t.Errorf("gateway table entry %q", got)
			}
			if err := lease.Close(); err != nil {
				t.Fatal(err)
			}
			if len(f.table()) != 0 {
				t.Errorf("left on the gateway after Close: %v", f.table())
			}
		})
	}
}

// TestRace lets all three protocols answer fakes: Map races their probes
// and maps with one protocol only, so exactly one mapping is ever made (no
// partial mappings of losers). When the first to answer then refuses to
// map, the next one maps.
func TestRace(t *testing.T) {
	for _, pcpRefuses := range []bool{false, true} {
		t.Run(fmt.Sprintf("pcp refuses %v", pcpRefuses), func(t *testing.T) {
			igd := newFakeIGD(t)
			var mu sync.Mutex
			maps := map[string]int{} // map requests (lifetime > 0) per protocol
			live := map[string]bool{}
			pmp := newFakePMP(t, func(b []byte) [][]byte {
				mu.Lock()
				defer mu.Unlock()
				if req, ok := parsePCPRequest(b); ok {
					if req.op == pcpOpAnnounce {
						return [][]byte{encodePCP(pcpResponse{op: pcpOpAnnounce})}
					}
					g := pcpGrant(req, extIP, 3600)
					g.external = netip.AddrPortFrom(extIP, 5001)
					if req.lifetime != 0 {
						maps[PCP]++
						if pcpRefuses {
							g.result, g.lifetime = 8, 0
							return [][]byte{encodePCP(g)}
						}
					}
					live[PCP] = req.lifetime != 0
					return [][]byte{encodePCP(g)}
				}
				switch {
				case len(b) == 2 && b[1] == 0:
					return [][]byte{encodePMPAddress(0, extIP)}
				case len(b) == 12 && b[1] == pmpOpMapTCP:
					l := binary.BigEndian.Uint32(b[8:])
					if l != 0 {
						maps[NATPMP]++
					}
					live[NATPMP] = l != 0
					return [][]byte{encodePMPMap(0, binary.BigEndian.Uint16(b[4:]), 5002, l)}
				}
				return nil
			})
			opts, _ := loopOptions(t, pmp.port(), igd.port())
			c, err := New(opts)
			if err != nil {
				t.Fatal(err)
			}
			lease, err := c.Map(context.Background(), 4242)
			if err != nil {
				t.Fatal(err)
			}
			m := lease.Current()
			mu.Lock()
			upnpMaps := igd.count("AddPortMapping")
			nmaps := maps[PCP] + maps[NATPMP] + upnpMaps
			nlive := len(igd.table())
			for _, l := range live {
				if l {
					nlive++
				}
			}
			summary := fmt.Sprintf("map requests pcp %d natpmp %d upnp %d; live pcp %v natpmp %v upnp %v", maps[PCP], maps[NATPMP], upnpMaps, live[PCP], live[NATPMP], igd.table())
			mu.Unlock()
			// One map request, or two when PCP answered its probe first and
			// then refused to map.
			wantMaps := 1
			if pcpRefuses {
				wantMaps += maps[PCP]
				if m.Protocol == PCP {
					t.Errorf("won by %v, which refused", m)
				}
			}
			if nmaps != wantMaps || nlive != 1 {
				t.Errorf("won by %v; %s; want %d map requests and 1 live mapping", m, summary, wantMaps)
			}
			if err := lease.Close(); err != nil {
				t.Fatal(err)
			}
		})
	}
}
