#!/bin/sh
# BIND 9.20 (dnssec-policy manual-mode) beside lab/experiments/unpublished_signing.sh: can named
# 9.20 sign the zone with a key whose DNSKEY is not published yet (algorithm rollover, step 1;
# docs/lifecycle.md)? Runs named 9.20 from the trixie debootstrap root (lab/krs_lab/sysroot.py,
# ./run setup makes it) through bwrap, or from the host when the host has 9.20. Not run by the tests.
# Loopback only; port BASE (default 20541). Work dir: /tmp/unpub-exp/run920 (shared with the root).
set -eu
BASE=${BASE:-20541}
ROOT=${KRS_SYSROOT_DIR:-/var/cache/krs-plugin/sysroots}/trixie
W=/tmp/unpub-exp/run920
if named -v 2>/dev/null | grep -q 'BIND 9\.2'; then IN=""; else
  IN="bwrap --bind $ROOT / --bind /tmp /tmp --dev /dev --proc /proc --die-with-parent --"; fi
rm -rf "$W"; mkdir -p "$W"; cd "$W"
Z=example.test
cat > db.$Z <<'Z'
$TTL 300
@ IN SOA ns1.example.test. host.example.test. 1 3600 600 86400 300
@ IN NS ns1.example.test.
ns1 IN A 127.0.0.1
www IN A 192.0.2.1
Z
show() { # which DNSKEYs are served, which algorithm/tag signs DNSKEY, SOA and www A
  for q in "$Z DNSKEY" "$Z SOA" "www.$Z A"; do
    dig +dnssec +norec +time=2 -p "$BASE" @127.0.0.1 $q |
      awk -v q="$q" '$1 !~ /^;/ && $4=="DNSKEY" {print "  " q ": DNSKEY flags " $5 " alg " $7}
                      $1 !~ /^;/ && $4=="RRSIG" && $5==substr(q, index(q," ")+1) {print "  " q ": RRSIG alg " $6 " tag " $11}' |
      awk '!seen[$0]++'
  done
}
state() { # key file stem, role lines, extra state lines: a .state named reads
  { echo "; state written by the experiment"; echo "Algorithm: $2"; echo "Length: $3"
    echo "Lifetime: 0"; echo "KSK: yes"; echo "ZSK: yes"; printf '%s' "${4:-}"; } > "$1.state"
}
run() { # $1: title
  echo "== $1"
  cat > named.conf <<C
options { directory "$W"; listen-on port $BASE { 127.0.0.1; }; listen-on-v6 { none; };
  pid-file "$W/named.pid"; recursion no; dnssec-validation no; notify no; };
controls { };
dnssec-policy "ext" { manual-mode yes; keys {
  csk key-directory lifetime unlimited algorithm 13;
  csk key-directory lifetime unlimited algorithm 15; }; };
zone "$Z" { type primary; file "db.$Z"; key-directory "keys"; dnssec-policy "ext"; inline-signing yes; checkds no; };
C
  $IN /usr/sbin/named -c "$W/named.conf" -L "$W/named.log" -u root; sleep 4; show
  grep -E "is now|manual-mode|Fetching" named.log | sort -u -k3 | sed 's/^[^ ]* [^ ]* /  log: /' | head -12
  kill "$(cat named.pid)"; sleep 1; rm -f named.log "$Z".*.jnl db.$Z.signed* ./*.jnl
}
KG="$IN /usr/bin/dnssec-keygen -q -K keys"
mkdir keys
OLD=$($KG -a 13 -f KSK -P -1d -A -1d $Z)                       # old CSK, published+active
NEW=$($KG -a 15 -f KSK -P +1y -A -1h $Z)                       # new algorithm: Activate past, Publish future
state "keys/$OLD" 13 256; state "keys/$NEW" 15 256
echo "old CSK $OLD, new CSK $NEW"
run "A: new CSK with Publish +1y, Activate -1h, minimal .state (named derives the states from the times)"
cat keys/$NEW.state | grep State | sed 's/^/  state: /'
state "keys/$OLD" 13 256
state "keys/$NEW" 15 256 "DNSKEYState: hidden
KRRSIGState: omnipresent
ZRRSIGState: omnipresent
GoalState: omnipresent
"
run "B: the new CSK's .state written with DNSKEYState hidden, KRRSIGState/ZRRSIGState omnipresent"
cat keys/$NEW.state | grep State | sed 's/^/  state: /'
