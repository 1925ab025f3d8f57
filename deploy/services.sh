# Sourced (bash 4+) by the deploy, CI and bench scripts: City Events' module table, read from
# deploy/services.tsv beside this file (what `cityevents services` prints; a test holds the two
# equal), so no script keeps its own list of services or ports. Sets:
#   SERVICES          every service's short name, in start order (the gateway last)
#   DB_SERVICES       those with a database (and a migrate step)
#   CALLED            those another service calls over HTTP (each has a CITYEVENTS_<SVC>_URL)
#   ENTRY             those no service calls (the gateway): stopped first
#   PORT[svc]         the default API port;  MANAGEMENT_PORT[svc]  the management port
#   UPSTREAMS[svc]    the services it calls, space-separated (empty for none)
SERVICES=() DB_SERVICES=() CALLED=() ENTRY=()
declare -A PORT=() MANAGEMENT_PORT=() UPSTREAMS=()
while IFS=$'\t' read -r _short _name _port _management _database _upstreams; do
  [[ -z "$_short" || "$_short" == \#* ]] && continue
  SERVICES+=("$_short")
  PORT[$_short]=$_port
  MANAGEMENT_PORT[$_short]=$_management
  [[ "$_database" == db ]] && DB_SERVICES+=("$_short")
  [[ "$_upstreams" == - ]] && _upstreams=
  UPSTREAMS[$_short]=${_upstreams//,/ }
done <"$(dirname "${BASH_SOURCE[0]}")/services.tsv"
for _short in "${SERVICES[@]}"; do
  _called=false
  for _other in "${SERVICES[@]}"; do
    [[ " ${UPSTREAMS[$_other]} " == *" $_short "* ]] && _called=true
  done
  if $_called; then CALLED+=("$_short"); else ENTRY+=("$_short"); fi
done
unset _short _name _port _management _database _upstreams _called _other
