#!/usr/bin/env bash
# Start a throwaway single-node Slurm on localhost, with accounting, for the Slurm-launcher tests; source this file.
# munged, mariadbd, slurmdbd, slurmctld and slurmd run in the foreground as children of this shell, everything
# (config, state, spool, logs, sockets, fake GPU devices) under one temporary directory, on free ports.
# Exports GEMKR_TEST_SLURM_CONF (its slurm.conf; clients take it as SLURM_CONF). On exit, before any EXIT trap
# set earlier (.ci/postgres.sh's), the daemons are stopped by their pid files and reaped here (PID 1 does not).
# GEMKR_SLURM_NO_INSTALL=1: fail instead of installing missing packages (the tests' fallback uses it).
# For tests: jobs start ~1 s after submission (batch_sched_delay=0, sched_min_interval=0), a cancelled job's
# processes are SIGKILLed 5 s after its SIGTERM (KillWait=5), a requeued job may start again 10 s after its
# requeue (cred_expire=10; Slurm's default, 120 s, is also a requeued job's wait). Two fake GPUs (gres on
# character devices) so that --gpus-per-node schedules, limits concurrency and sets CUDA_VISIBLE_DEVICES.
# Measured on the project's machine: install ~40 s when the packages are missing, start 4-10 s, stop ~3 s.
gemkr_slurm_start() {
  local d=$1 p
  local need=(munged mungekey mariadbd mariadb-install-db mariadb slurmdbd slurmctld slurmd sbatch sacct)
  for p in "${need[@]}"; do
    if ! command -v "$p" >/dev/null 2>&1; then
      if [ "${GEMKR_SLURM_NO_INSTALL:-0}" = 1 ]; then
        echo "slurm.sh: $p is not installed (apt-get install slurm-wlm slurmdbd munge mariadb-server)" >&2
        return 1
      fi
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurmdbd munge mariadb-server >/dev/null || return 1
      break
    fi
  done
  local ports
  ports=$(python3 -c 'import socket
s = [socket.socket() for _ in range(4)]
for x in s: x.bind(("127.0.0.1", 0))
print(" ".join(str(x.getsockname()[1]) for x in s))') || return 1
  read -r GEMKR_SLURM_CTLD_PORT GEMKR_SLURM_SLURMD_PORT GEMKR_SLURM_DBD_PORT GEMKR_SLURM_DB_PORT <<<"$ports"
  chmod 755 "$d"
  mkdir -p "$d/munge" "$d/db" "$d/state" "$d/spool" "$d/dev"
  chown munge:munge "$d/munge" && chmod 755 "$d/munge"
  chown mysql:mysql "$d/db"

  # munge: its own key and socket (a system munged, if any, is left alone)
  runuser -u munge -- mungekey -c -k "$d/munge/munge.key" || return 1
  munged --foreground --force -S "$d/munge/munge.socket" --key-file="$d/munge/munge.key" \
    --pid-file="$d/munge/munged.pid" --log-file="$d/munge/munged.log" --seed-file="$d/munge/munged.seed" \
    >/dev/null 2>&1 &
  GEMKR_SLURM_PIDS=("munged:$!")
  gemkr_slurm_wait 20 "munged" test -S "$d/munge/munge.socket" || return 1

  # MariaDB for slurmdbd (accounting: submitit reads job states through sacct)
  mariadb-install-db --no-defaults --user=mysql --datadir="$d/db/data" --auth-root-authentication-method=socket \
    --skip-test-db >"$d/db/install.log" 2>&1 || { cat "$d/db/install.log" >&2; return 1; }
  mariadbd --no-defaults --user=mysql --datadir="$d/db/data" --socket="$d/db/mysqld.sock" \
    --pid-file="$d/db/mysqld.pid" --bind-address=127.0.0.1 --port="$GEMKR_SLURM_DB_PORT" --skip-name-resolve \
    --log-error="$d/db/error.log" --innodb-buffer-pool-size=32M >/dev/null 2>&1 &
  GEMKR_SLURM_PIDS+=("mariadbd:$!")
  gemkr_slurm_wait 60 "mariadbd" mariadb-admin --no-defaults -S "$d/db/mysqld.sock" -u root ping || return 1
  mariadb --no-defaults -S "$d/db/mysqld.sock" -u root -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
    GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || return 1

  # fake GPUs: character devices (a copy of /dev/null), so that --gpus schedules and sets CUDA_VISIBLE_DEVICES
  mknod -m 666 "$d/dev/nvidia0" c 1 3 && mknod -m 666 "$d/dev/nvidia1" c 1 3 || return 1
  local hw
  hw=$(slurmd -C | head -n 1 | sed -e 's/^NodeName=[^ ]* //' -e 's/ *$//') || return 1
  cat >"$d/slurm.conf" <<EOF
ClusterName=gemkr
SlurmctldHost=localhost
SlurmUser=root
SlurmctldPort=$GEMKR_SLURM_CTLD_PORT
SlurmdPort=$GEMKR_SLURM_SLURMD_PORT
AuthType=auth/munge
AuthInfo=socket=$d/munge/munge.socket,cred_expire=10
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/slurmctld.log
SlurmdLogFile=$d/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStoragePort=$GEMKR_SLURM_DBD_PORT
AccountingStoragePass=$d/munge/munge.socket
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=2048
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
KillWait=5
MinJobAge=3600
ReturnToService=2
MpiDefault=none
GresTypes=gpu
NodeName=localhost $hw Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$d/gres.conf" <<EOF
AutoDetect=off
Name=gpu File=$d/dev/nvidia[0-1]
EOF
  cat >"$d/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$d/munge/munge.socket
DbdHost=localhost
DbdPort=$GEMKR_SLURM_DBD_PORT
SlurmUser=root
LogFile=$d/slurmdbd.log
PidFile=$d/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$GEMKR_SLURM_DB_PORT
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
EOF
  chmod 600 "$d/slurmdbd.conf"
  local conf="$d/slurm.conf"
  SLURM_CONF=$conf slurmdbd -D >"$d/slurmdbd.out" 2>&1 &
  GEMKR_SLURM_PIDS+=("slurmdbd:$!")
  gemkr_slurm_wait 60 "slurmdbd" grep -q "slurmdbd version .* started" "$d/slurmdbd.log" || return 1
  SLURM_CONF=$conf slurmctld -D -i >"$d/slurmctld.out" 2>&1 &
  GEMKR_SLURM_PIDS+=("slurmctld:$!")
  SLURM_CONF=$conf slurmd -D >"$d/slurmd.out" 2>&1 &
  GEMKR_SLURM_PIDS+=("slurmd:$!")
  gemkr_slurm_wait 60 "the node to be idle" env SLURM_CONF="$conf" sh -c '[ "$(sinfo -h -N -o %t)" = idle ]' ||
    return 1
  gemkr_slurm_wait 60 "accounting (sacct)" env SLURM_CONF="$conf" sacct -n -X -a -S now-1hour || return 1
  export GEMKR_TEST_SLURM_CONF=$conf
}

# gemkr_slurm_wait SECONDS WHAT COMMAND...: run COMMAND until it succeeds, failing (with the logs) after SECONDS
gemkr_slurm_wait() {
  local what=$2 deadline=$((SECONDS + $1))
  shift 2
  while ((SECONDS < deadline)); do
    timeout 10 "$@" >/dev/null 2>&1 && return 0
    sleep 0.2
  done
  echo "slurm.sh: timed out waiting for $what; logs under $GEMKR_SLURM_DIR:" >&2
  tail -n 20 "$GEMKR_SLURM_DIR"/*.log "$GEMKR_SLURM_DIR"/*.out "$GEMKR_SLURM_DIR"/db/*.log >&2 2>/dev/null
  return 1
}

# Stop the daemons, newest first, by their pid files (the pid of the started process where a daemon wrote
# none), SIGKILL after 20 s, and reap each (they are this shell's children).
gemkr_slurm_stop() {
  local - i entry name pid file n
  set +e # runs in an EXIT trap, maybe under `set -e`: a daemon already gone must not end the clean-up
  for ((i = ${#GEMKR_SLURM_PIDS[@]} - 1; i >= 0; i--)); do
    entry=${GEMKR_SLURM_PIDS[i]}
    name=${entry%%:*} pid=${entry#*:}
    case $name in
      munged) file=$GEMKR_SLURM_DIR/munge/munged.pid ;;
      mariadbd) file=$GEMKR_SLURM_DIR/db/mysqld.pid ;;
      *) file=$GEMKR_SLURM_DIR/$name.pid ;;
    esac
    [ -s "$file" ] && pid=$(cat "$file")
    kill -TERM "$pid" 2>/dev/null
    for ((n = 0; n < 100; n++)); do
      [ -e "/proc/$pid" ] && ! grep -q '^[^)]*) Z' "/proc/$pid/stat" 2>/dev/null || break
      sleep 0.2
    done
    kill -KILL "$pid" 2>/dev/null
    wait "${entry#*:}" 2>/dev/null
  done
  GEMKR_SLURM_PIDS=()
  rm -rf "$GEMKR_SLURM_DIR"
}

GEMKR_SLURM_PIDS=()
GEMKR_SLURM_DIR=$(mktemp -d /tmp/gemkr-slurm.XXXXXX)
# an EXIT trap set before (the PostgreSQL one) still runs, after ours
eval "gemkr_slurm_prev_trap=($(trap -p EXIT))"
trap "gemkr_slurm_stop; ${gemkr_slurm_prev_trap[2]:-}" EXIT
gemkr_slurm_started=$(date +%s.%N)
if gemkr_slurm_start "$GEMKR_SLURM_DIR"; then
  echo "slurm.sh: single-node Slurm with accounting up in $(python3 -c "import time; print(round(time.time() - $gemkr_slurm_started, 1))") s ($GEMKR_SLURM_DIR)"
else
  echo "slurm.sh: could not start Slurm (logs above)" >&2
  false
fi
