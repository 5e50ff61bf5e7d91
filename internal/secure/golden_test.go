package secure

// Golden values of TestTicketGolden, computed independently of this package
// (Python hmac/hashlib HKDF-SHA256, zlib.crc32, base64.b32encode) from the
// format in the package doc.
const (
	goldenTicket = "pp1byytsmrogaxdelrrhi3tambqaaaqeayeaudaocajbifqydiob4ibceqtcqkrmfyydenbwha5dypybamcqocilbuhrceyvc4mrwhi7eerskjzjfmws6mjtgu3tsoz5hydo5sweqcbijbuirkgi5eesssljrgu4t2qkfjfgvcvkzlvqwk2lnof2xs7jcnhk4q"
	// goldenTicketNoPin: broker "broker.test:443", the pin all zeros (a
	// broker with a CA-issued certificate), the rest as goldenTicket.
	goldenTicketNoPin = "pp1b5rhe33lmvzc45dfon2dunbugmaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaabaebqkbyjbmgq6eitculrsgy5d4qsgjjhfevs2lzrgm2tooj3hu7an3wkysaifbegrcfizduqskkjnge2tspkbiveu2ukvlfowczljnvyxk6l5qmfflc"
	// goldenTicketMulti: broker "192.0.2.1:7000,192.0.2.2:7000,[2001:db8::1]:443"
	// (a broker of three nodes), the rest as goldenTicket.
	goldenTicketMulti = "pp1f4ytsmrogaxdelrrhi3tambqfqytsmrogaxdelrshi3tambqfrntembqge5giyryhi5dcxj2gq2dgaabaibqibiga4eascqlbqgq4dyqcejbgfavcylrqgi2dmob2hq7qcayfa4eqwdipcejrkfyzdmor6ijdeutsskznf4ytgnjxhe5t2pqg53fmjaecqsdircumr2ijffewtcnjzhvauksknkfkvsxlbmvuw24lvpf7uqswxba"
	goldenAdmit       = "2230668901e286faa3d136d81007df8f9e27bac71c803e8f18edb40e82a823f0"
	goldenProof       = "b4d4083eca10215fac2ca664b11acbcc4deff111052c08139437c293750a1731"
)
