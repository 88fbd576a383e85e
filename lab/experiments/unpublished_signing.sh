#!/bin/sh
# Reproduces the "signing with a key whose DNSKEY is not published" experiment recorded in
# docs/lifecycle.md (algorithm rollover, step 1). Not run by the tests.
# Needs: named/dnssec-* (bind9, bind9-dnsutils), knotd/keymgr/knotc, nsd, ldns-signzone (ldnsutils),
# pdns_server/pdnsutil with pdns-backend-sqlite3, sqlite3 or python3, dig.
# Loopback only; ports BASE..BASE+4 (NSD runs before PowerDNS) (BASE defaults to 20531). Work dir: /tmp/unpub-exp/run.
set -eu
BASE=${BASE:-20531}
W=/tmp/unpub-exp/run
rm -rf "$W"; mkdir -p "$W"; cd "$W"
Z=example.test
cat > db.$Z <<'Z'
$TTL 300
@ IN SOA ns1.example.test. host.example.test. 1 3600 600 86400 300
@ IN NS ns1.example.test.
ns1 IN A 127.0.0.1
www IN A 192.0.2.1
Z
show() { # port: which DNSKEYs are served, which key tags sign DNSKEY, SOA and www A
  for q in "$Z DNSKEY" "$Z SOA" "www.$Z A"; do
    dig +dnssec +norec +time=2 -p "$1" @127.0.0.1 $q |
      awk -v q="$q" '$1 !~ /^;/ && $4=="DNSKEY" {print "  " q ": DNSKEY flags " $5 " alg " $7}
                      $1 !~ /^;/ && $4=="RRSIG" && $5==substr(q, index(q," ")+1) {print "  " q ": RRSIG alg " $6 " tag " $11}'
  done
}

echo "== BIND $(named -v | cut -d' ' -f2): auto-dnssec maintain, new key Publish +1y, Activate -1h"
mkdir bind bind/keys
OLD=$(dnssec-keygen -q -K bind/keys -a 13 -f KSK $Z)                        # old, published+active
NEW=$(dnssec-keygen -q -K bind/keys -a 15 -f KSK -P +1y -A -1h $Z)          # algorithm rollover
SAME=$(dnssec-keygen -q -K bind/keys -a 13 -P +1y -A -1h $Z)                # same algorithm (ZSK)
echo "  old $OLD, new $NEW, same-algorithm $SAME"
cp db.$Z bind/
cat > bind/named.conf <<C
options { directory "$W/bind"; listen-on port $BASE { 127.0.0.1; }; listen-on-v6 { none; };
  pid-file "$W/bind/named.pid"; recursion no; dnssec-validation no; };
controls { };
zone "$Z" { type primary; file "db.$Z"; key-directory "keys"; auto-dnssec maintain; inline-signing yes; };
C
named -c bind/named.conf -L "$W/bind/named.log" -u root; sleep 4; show $BASE
grep -E "Fetching|is now" bind/named.log | sed 's/^/  log: /'
kill "$(cat bind/named.pid)"

echo "== dnssec-signzone -S (same key files) + NSD $(nsd -v 2>&1 | head -1 | cut -d' ' -f3)"
mkdir sz; cp bind/keys/*.key bind/keys/*.private sz/
( cd sz && dnssec-signzone -S -z -K . -o $Z -f signed.bind ../db.$Z >/dev/null 2>&1 )
echo "== ldns-signzone -d (same key files, old DNSKEY in the input zone)"
( cd sz && { cat ../db.$Z; grep -v '^;' $OLD.key; } > in.ldns &&
  ldns-signzone -d -o $Z -f signed.ldns in.ldns $OLD $NEW &&
  ldns-signzone -d -o $Z -f signed.ldns-same in.ldns $OLD $NEW $SAME )
i=0
for f in signed.bind signed.ldns signed.ldns-same; do
  i=$((i+1)); P=$((BASE+1+i)); mkdir nsd$i; cp sz/$f nsd$i/$Z.zone
  cat > nsd$i/nsd.conf <<C
server:
    ip-address: 127.0.0.1@$P
    zonesdir: $W/nsd$i
    database: ""
    pidfile: $W/nsd$i/nsd.pid
    xfrdfile: $W/nsd$i/xfrd.state
    zonelistfile: $W/nsd$i/zone.list
    logfile: $W/nsd$i/nsd.log
    username: ""
    chroot: ""
remote-control:
    control-enable: no
zone:
    name: $Z
    zonefile: $Z.zone
C
  nsd -c nsd$i/nsd.conf; sleep 2; echo " nsd serving $f:"; show $P; kill "$(cat nsd$i/nsd.pid)"
done

echo "== Knot $(knotd -V | awk '{print $NF}'): manual policy, keymgr pre_active in the past, publish in the future"
mkdir knot; cp db.$Z knot/$Z.zone
cat > knot/knot.conf <<C
server:
    listen: 127.0.0.1@$((BASE+1))
    rundir: $W/knot
database:
    storage: $W/knot
policy:
  - id: manual
    manual: on
template:
  - id: default
    storage: $W/knot
    file: "%s.zone"
    zonefile-sync: -1
zone:
  - domain: $Z
    dnssec-signing: on
    dnssec-policy: manual
C
K="keymgr -c knot/knot.conf $Z"
$K generate algorithm=13 ksk=yes zsk=yes >/dev/null
$K generate algorithm=15 ksk=yes zsk=yes publish=+1y ready=+1y active=+1y pre_active=-1h >/dev/null 2>&1
$K generate algorithm=13 ksk=no zsk=yes publish=+1y active=+1y pre_active=-1h >/dev/null 2>&1
$K list -e | grep -oE 'tag=[0-9]+ algorithm=[0-9]+|pre-active=[0-9]+|publish=[0-9]+' | paste -d' ' - - - | sed 's/^/  key /'
knotd -c knot/knot.conf -d; sleep 3; show $((BASE+1)); knotc -c knot/knot.conf stop >/dev/null

echo "== PowerDNS $(pdns_server --version 2>&1 | sed -n 's/.*PowerDNS Authoritative Server \([0-9.]*\).*/\1/p' | head -1): gsqlite3, pdnsutil"
mkdir pdns
python3 -c "import sqlite3;sqlite3.connect('pdns/pdns.db').executescript(open('/usr/share/doc/pdns-backend-sqlite3/schema.sqlite3.sql').read())"
cat > pdns/pdns.conf <<C
launch=gsqlite3
gsqlite3-database=$W/pdns/pdns.db
gsqlite3-dnssec=yes
local-address=127.0.0.1
local-port=$((BASE+4))
socket-dir=$W/pdns
daemon=no
guardian=no
write-pid=no
disable-syslog=yes
cache-ttl=0
query-cache-ttl=0
negquery-cache-ttl=0
C
U="pdnsutil --config-dir=$W/pdns"
$U load-zone $Z db.$Z >/dev/null 2>&1
$U add-zone-key $Z ksk active published ecdsa256 >/dev/null 2>&1
ID=$($U add-zone-key $Z ksk active published ed25519 2>/dev/null | tail -1)
$U unpublish-zone-key $Z "$ID"
pdns_server --config-dir=$W/pdns >pdns/pdns.log 2>&1 & echo $! > pdns/pid; sleep 3
echo " algorithm case (ed25519 key added active, then unpublish-zone-key):"; show $((BASE+4))
kill "$(cat pdns/pid)"; wait "$(cat pdns/pid)" 2>/dev/null || true
ID=$($U add-zone-key $Z zsk active published ecdsa256 2>/dev/null | tail -1)
$U unpublish-zone-key $Z "$ID"; $U show-zone $Z | grep '^ID' | sed 's/^/  /'
pdns_server --config-dir=$W/pdns >pdns/pdns.log 2>&1 & echo $! > pdns/pid; sleep 3
echo " plus same algorithm (ecdsa256 ZSK active, unpublished):"; show $((BASE+4))
kill "$(cat pdns/pid)"; wait "$(cat pdns/pid)" 2>/dev/null || true
