#!/usr/bin/env bash
# One entrypoint for every container of the cluster; the first argument is the role:
#   mariadb | slurmdbd | slurmctld | slurmd | slurmrestd
# or, on a running container, `users`: create the site's users that are new (the CLI runs it).
# Mounted read-only from images/runtime/ (docker-compose.yml), like slurm/: not in the image.
# What it needs per cluster comes from the environment the slurmlab CLI gives Compose.
#
# Per-cluster secrets are created here on first start, into volumes, never into the image:
#   /etc/munge/munge.key          (volume "munge",     0400 munge)  every Slurm container
#   /run/slurmlab/db/password     (volume "db-secret", 0400 root)   mariadb and slurmdbd only
#   /etc/slurmlab/jwt/jwt_hs256.key (volume "jwt",     0400 slurm)  slurmdbd and slurmctld only
set -euo pipefail

# slurmlab's slurm/ folder and this one, mounted read-only (docker-compose.yml).
readonly CONFIG_SRC=/etc/slurmlab/slurm
# What the CLI renders from the cluster's site description (slurmlab/site.py), mounted read-only:
# slurm.conf (included by slurm/slurm.conf), users, features, profile.sh.
readonly SITE_DIR=/etc/slurmlab/site
readonly RUNTIME=/opt/slurmlab/runtime
readonly SLURM_ETC=/etc/slurm
readonly MUNGE_KEY=/etc/munge/munge.key
readonly DB_SECRET_DIR=/run/slurmlab/db
readonly DB_PASSWORD_FILE=${DB_SECRET_DIR}/password
# AuthAltParameters=jwt_key= in slurm/slurm.conf and slurm/slurmdbd.conf.template.
readonly JWT_DIR=/etc/slurmlab/jwt
readonly JWT_KEY=${JWT_DIR}/jwt_hs256.key
# slurmrestd's own unprivileged user: Slurm refuses to run it as root or as SlurmUser.
readonly REST_USER=slurmrest
readonly JOB_USER=${SLURMLAB_JOB_USER:?set by the image}

log() { printf '[slurmlab-entrypoint %s] %s\n' "$(hostname)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# Run "$@" once per secret even when several containers start together on a fresh volume.
with_lock() {
    local lockfile=$1; shift
    exec {lock_fd}>"${lockfile}"
    flock "${lock_fd}"
    "$@"
    flock -u "${lock_fd}"
}

create_munge_key() {
    if [[ ! -s ${MUNGE_KEY} ]]; then
        log "creating this cluster's munge key"
        (umask 077 && head -c 1024 /dev/urandom >"${MUNGE_KEY}.new")
        mv "${MUNGE_KEY}.new" "${MUNGE_KEY}"
    fi
    chown munge:munge /etc/munge "${MUNGE_KEY}"
    chmod 0700 /etc/munge
    chmod 0400 "${MUNGE_KEY}"
}

start_munge() {
    with_lock /etc/munge/.keygen.lock create_munge_key
    install -d -o munge -g munge -m 0755 /run/munge
    install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
    runuser -u munge -- /usr/sbin/munged --force
    # Fail here, with a clear message, rather than later as "Invalid credential" in a daemon.
    munge -n </dev/null | unmunge >/dev/null || die "munge does not work (key: ${MUNGE_KEY})"
}

create_db_password() {
    if [[ ! -s ${DB_PASSWORD_FILE} ]]; then
        log "creating this cluster's database password"
        (umask 077 && head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' >"${DB_PASSWORD_FILE}.new")
        mv "${DB_PASSWORD_FILE}.new" "${DB_PASSWORD_FILE}"
    fi
    chown root:root "${DB_SECRET_DIR}" "${DB_PASSWORD_FILE}"
    chmod 0700 "${DB_SECRET_DIR}"
    chmod 0400 "${DB_PASSWORD_FILE}"
}

ensure_db_password() {
    install -d -m 0700 "${DB_SECRET_DIR}"
    with_lock "${DB_SECRET_DIR}/.keygen.lock" create_db_password
}

# The REST API's HS256 key (auth/jwt): 32 random bytes, the size Slurm's JWT guide uses, readable
# by SlurmUser only. slurmdbd and slurmctld share it through the "jwt" volume, which nothing else
# mounts.
create_jwt_key() {
    if [[ ! -s ${JWT_KEY} ]]; then
        log "creating this cluster's JWT key (REST API tokens)"
        (umask 077 && head -c 32 /dev/urandom >"${JWT_KEY}.new")
        mv "${JWT_KEY}.new" "${JWT_KEY}"
    fi
    chown slurm:slurm "${JWT_DIR}" "${JWT_KEY}"
    chmod 0700 "${JWT_DIR}"
    chmod 0400 "${JWT_KEY}"
}

ensure_jwt_key() {
    install -d -m 0700 "${JWT_DIR}"
    with_lock "${JWT_DIR}/.keygen.lock" create_jwt_key
}

# slurm.conf and cgroup.conf are read live from slurm/ (edit, then `scontrol reconfigure`);
# only files that depend on the container or the cluster (gres.conf, the node bound that
# slurm.conf includes) or hold secrets (slurmdbd.conf) are rendered.
link_slurm_config() {
    [[ -f ${CONFIG_SRC}/slurm.conf ]] || die "${CONFIG_SRC}/slurm.conf not found: is slurmlab's slurm/ folder mounted there (docker-compose.yml)?"
    install -d -m 0755 "${SLURM_ETC}"
    ln -sfn "${CONFIG_SRC}/slurm.conf" "${SLURM_ETC}/slurm.conf"
    ln -sfn "${CONFIG_SRC}/cgroup.conf" "${SLURM_ETC}/cgroup.conf"
    ln -sfn "${CONFIG_SRC}/cli_filter.lua" "${SLURM_ETC}/cli_filter.lua"
    local max_nodes=${SLURMLAB_MAX_NODES:?run through slurmlab}
    printf '# Written by the slurmlab entrypoint: the node services of docker-compose.yml.\nMaxNodeCount=%s\n' \
        "${max_nodes}" >"${SLURM_ETC}/slurmlab-cluster.conf"
    install -d -o slurm -g slurm -m 0755 /var/log/slurm
}

run_mariadb() {
    ensure_db_password
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    cat >/etc/mysql/mariadb.conf.d/99-slurmlab.cnf <<'EOF'
# Written by the slurmlab entrypoint. Values recommended by Slurm's accounting guide, sized small.
[mysqld]
bind-address = 0.0.0.0
innodb_buffer_pool_size = 128M
innodb_lock_wait_timeout = 900
innodb_log_file_size = 64M
EOF
    if [[ ! -d /var/lib/mysql/mysql ]]; then
        log "initialising the accounting database"
        chown mysql:mysql /var/lib/mysql
        mariadb-install-db --user=mysql --datadir=/var/lib/mysql --skip-test-db \
            --auth-root-authentication-method=socket >/dev/null
        mariadbd --user=mysql --skip-networking --socket=/run/mysqld/init.sock &
        local pid=$! tries=0
        until mariadb --protocol=socket --socket=/run/mysqld/init.sock -uroot -e 'SELECT 1' >/dev/null 2>&1; do
            (( ++tries < 60 )) || die "temporary MariaDB did not start"
            sleep 0.5
        done
        # The password goes through stdin, never a command line or a log.
        mariadb --protocol=socket --socket=/run/mysqld/init.sock -uroot <<EOF
CREATE DATABASE IF NOT EXISTS slurm_acct_db;
CREATE USER IF NOT EXISTS 'slurm'@'%' IDENTIFIED BY '$(cat "${DB_PASSWORD_FILE}")';
GRANT ALL PRIVILEGES ON slurm_acct_db.* TO 'slurm'@'%';
FLUSH PRIVILEGES;
EOF
        mariadb-admin --protocol=socket --socket=/run/mysqld/init.sock -uroot shutdown
        wait "${pid}"
    fi
    exec mariadbd --user=mysql
}

run_slurmdbd() {
    ensure_db_password
    ensure_jwt_key
    start_munge
    link_slurm_config
    local password
    password=$(cat "${DB_PASSWORD_FILE}")
    (umask 077 && sed "s|@DB_PASSWORD@|${password}|" "${CONFIG_SRC}/slurmdbd.conf.template" \
        >"${SLURM_ETC}/slurmdbd.conf")
    chown slurm:slurm "${SLURM_ETC}/slurmdbd.conf"
    chmod 0600 "${SLURM_ETC}/slurmdbd.conf"
    exec slurmdbd -D
}

slurm_setting() { sed -n "s/^$1=//p" "${SLURM_ETC}/slurm.conf"; }

# The job user takes the uid/gid of the project folder's owner, as dev containers do: jobs can
# then write their output (slurm-%j.out) into the project, and what they write belongs to that
# user on the host. A root-owned project cannot be adopted (jobs never run as root): the job user
# keeps its image uid, and sbatch refuses output into the project up front (slurm/cli_filter.lua).
adopt_project_owner() {
    local project=${SLURMLAB_PROJECT_MOUNT:?run through slurmlab} uid gid current holder
    uid=$(stat -c %u "${project}")
    gid=$(stat -c %g "${project}")
    current=$(id -u "${JOB_USER}")
    if (( uid == 0 )); then
        log "the project ${project} belongs to root: ${JOB_USER} keeps uid ${current} and cannot write into it"
        return
    fi
    (( uid != current )) || return 0
    holder=$(getent passwd "${uid}" | cut -d: -f1 || true)
    if [[ -n ${holder} ]]; then
        log "warning: the project's owner uid ${uid} is ${holder} in the image; ${JOB_USER} keeps uid ${current}"
        return
    fi
    if getent group "${gid}" >/dev/null; then
        usermod -g "${gid}" "${JOB_USER}"
    else
        groupmod -g "${gid}" "${JOB_USER}"
        usermod -g "${gid}" "${JOB_USER}"
    fi
    usermod -u "${uid}" "${JOB_USER}"
    log "${JOB_USER} now has the project owner's uid ${uid} and gid ${gid}"
}

# Login shells (slurmlab shell, su -, Slurm's login environment for --export=NONE) start from
# /etc/profile, which resets PATH and so would drop the venv. Give them the container's own job
# environment: the image's and compose's variables, less those that belong to a session.
write_login_env() {
    local name
    {
        echo "# Written by the slurmlab entrypoint: the container's environment for login shells."
        while IFS= read -r name; do
            case ${name} in
                HOME | HOSTNAME | PWD | OLDPWD | SHLVL | TERM | USER | LOGNAME | _) ;;
                *) printf 'export %s=%q\n' "${name}" "${!name}" ;;
            esac
        done < <(compgen -e)
        # Who logged in, as login(1) and sshd say it: `docker exec -u NAME` sets neither, and
        # users type `squeue -u $USER`, `sacctmgr show assoc user=$USER`.
        # shellcheck disable=SC2016  # expanded by each login shell, not here
        echo 'export USER="${USER:-$(id -un)}" LOGNAME="${LOGNAME:-$(id -un)}"'
    } >/etc/profile.d/slurmlab.sh
}

# The site's other users (site/users: "name uid" per line), the same uid on every container, each
# with a private home on the shared /home volume. The job user is not listed: it takes the
# project owner's uid (adopt_project_owner).
site_users() { [[ -f ${SITE_DIR}/users ]] && cat "${SITE_DIR}/users"; return 0; }

create_site_users() {
    local name uid holder
    while read -r name uid; do
        [[ -n ${name} ]] || continue
        holder=$(getent passwd "${uid}" | cut -d: -f1 || true)
        if [[ -n ${holder} && ${holder} != "${name}" ]]; then
            log "warning: uid ${uid} of site user ${name} is ${holder}'s here: ${name} is not created"
            continue
        fi
        if ! getent group "${name}" >/dev/null; then groupadd -g "${uid}" "${name}"; fi
        if ! getent passwd "${name}" >/dev/null; then
            useradd -M -u "${uid}" -g "${name}" -d "/home/${name}" -s /bin/bash "${name}"
        fi
        # Several containers may reach this at once on the shared /home: mkdir is the arbiter.
        if mkdir -m 0700 "/home/${name}" 2>/dev/null; then
            cp -rT /etc/skel "/home/${name}"
            chown -R "${name}:${name}" "/home/${name}"
        fi
    done < <(site_users)
}

# Every user's login shell sources the site's profile (its umask: private run directories and
# logs), which sbatch passes to jobs (SLURM_UMASK). A link, so a changed site applies to the next
# login without restarting anything.
link_site_profile() {
    ln -sfn "${SITE_DIR}/profile.sh" /etc/profile.d/slurmlab-site.sh
}

# What slurmd gives a job for --export=NONE, --export=<list> and --get-user-env: the user's
# login environment, read from the cache file that GetEnvTimeout=0 selects (see slurm.conf), one
# per user who may run jobs.
write_user_env_cache() {
    local dir user
    dir="$(slurm_setting StateSaveLocation)/env_cache"
    install -d -m 0755 "${dir}"
    for user in "${JOB_USER}" $(site_users | cut -d' ' -f1); do
        getent passwd "${user}" >/dev/null || continue
        runuser -l "${user}" -c /usr/bin/env >"${dir}/${user}.new"
        mv "${dir}/${user}.new" "${dir}/${user}"
    done
}

# The shared filesystem's common folders, as a site's scratch: every user creates what they need
# there, and only its owner may remove it (the sticky bit, as /tmp).
prepare_shared() {
    local shared=${SLURMLAB_SHARED:?set in .env} sub
    install -d -m 1777 "${shared}"
    for sub in data runs logs submitit; do
        install -d -m 1777 "${shared}/${sub}"
    done
}

# `entrypoint.sh users` on a running container (the CLI, after the site's users changed): the
# users, and on a node their job environment.
sync_users() {
    create_site_users
    if [[ -d /var/spool/slurmd ]]; then write_user_env_cache; fi
}

run_slurmctld() {
    ensure_jwt_key
    start_munge
    link_slurm_config
    adopt_project_owner
    create_site_users
    write_login_env
    link_site_profile
    prepare_shared
    install -d -o slurm -g slurm -m 0700 /var/spool/slurmctld
    chown -R slurm:slurm /var/spool/slurmctld
    # Register the cluster before the controller's first start so sacct sees the very first job.
    local cluster
    cluster=$(slurm_setting ClusterName)
    if [[ -z $(sacctmgr -n -P show cluster "${cluster}" format=cluster) ]]; then
        log "registering cluster ${cluster} in accounting"
        sacctmgr -i add cluster "${cluster}" >/dev/null
    fi
    exec slurmctld -D
}

# The REST API. slurmrestd holds no key: each request carries its caller's token (X-SLURM-USER-TOKEN),
# which it hands on to slurmctld or slurmdbd, who check it (rest_auth/jwt; SLURM_JWT=daemon makes
# slurmrestd's own client speak auth/jwt). It knows the same users as the login node. Unprivileged
# containers may not unshare(2), which slurmrestd does by default to isolate each request's files
# and SysV IPC from the daemon: SLURMRESTD_SECURITY turns that off here (it is a second fence; the
# first, the caller's identity, is the token).
run_slurmrestd() {
    link_slurm_config
    adopt_project_owner
    create_site_users
    getent passwd "${REST_USER}" >/dev/null \
        || useradd --system --no-create-home --shell /usr/sbin/nologin "${REST_USER}"
    exec setpriv --reuid "${REST_USER}" --regid "${REST_USER}" --init-groups \
        env SLURM_JWT=daemon SLURMRESTD_SECURITY=disable_unshare_files,disable_unshare_sysv \
        slurmrestd -a rest_auth/jwt -s openapi/slurmctld,openapi/slurmdbd \
        -d "data_parser/${SLURMLAB_REST_API:?run through slurmlab}" 0.0.0.0:6820
}

# This node's share of the cluster's shape (`make up GPUS_PER_NODE=G`), from the CLI.
gpus_per_node() {
    local g=${SLURMLAB_GPUS_PER_NODE:?run through slurmlab}
    [[ ${g} =~ ^[1-9][0-9]*$ ]] || die "SLURMLAB_GPUS_PER_NODE=${g}: expected a whole number of GPUs, 1 or more"
    echo "${g}"
}

# gres.conf names the GPU device files this node really has. With real GPUs the container runtime
# provides /dev/nvidiaN; without them (SLURMLAB_GPU_MODE=emulated) we create G character devices
# with NVIDIA's major number so Slurm schedules them and sets CUDA_VISIBLE_DEVICES exactly as on a
# real node, while CUDA itself finds no GPU and jobs fall back to CPU.
write_gres_conf() {
    local mode=${SLURMLAB_GPU_MODE:?run through slurmlab} gpus devices=() i
    gpus=$(gpus_per_node)
    shopt -s nullglob
    devices=(/dev/nvidia[0-9]*)
    if [[ ${mode} == emulated ]]; then
        for (( i = ${#devices[@]}; i < gpus; i++ )); do mknod -m 0666 "/dev/nvidia${i}" c 195 "${i}"; done
        devices=(/dev/nvidia[0-9]*)
    fi
    (( ${#devices[@]} == gpus )) || die "SLURMLAB_GPU_MODE=${mode}: this node sees ${#devices[@]} GPU device(s) (${devices[*]:-none}) but the cluster's shape gives each node ${gpus}; check the NVIDIA container runtime, choose GPUS_PER_NODE=${#devices[@]}, or use emulated GPUs (GPUS=0)"
    {
        echo "# Written by the slurmlab entrypoint for $(hostname) (GPU mode: ${mode})."
        local dev
        for dev in "${devices[@]}"; do echo "Name=gpu File=${dev}"; done
    } >"${SLURM_ETC}/gres.conf"
}

# Nodes are dynamic (slurmd -Z): each registers itself with the controller, which adds it to the
# site's partitions (Nodes=ALL, or a NodeSet of the nodes with a partition's feature). So the node
# count lives only in how many node containers run (`make up NODES=N`, `make scale NODES=M`),
# never in slurm.conf, and nodes come and go without a controller restart. What a node offers is
# the site's, per GPU (SLURMLAB_CPUS_PER_GPU, SLURMLAB_MEMORY_PER_GPU_MB from the CLI), whatever
# the host has (SlurmdParameters=config_overrides lets 8 GPUs' worth of CPUs run on a 2-core
# host: the nodes share the host's cores anyway); its features are the partitions that hold only
# some nodes (site/features). Each registration records the node's current address, so a node
# that comes back on another Docker address is reached there.
node_definition() {
    local gpus cpus memory features
    gpus=$(gpus_per_node)
    cpus=$(( ${SLURMLAB_CPUS_PER_GPU:?run through slurmlab} * gpus ))
    memory=$(( ${SLURMLAB_MEMORY_PER_GPU_MB:?run through slurmlab} * gpus ))
    features=$(awk -v node="$(hostname)" '$1 == node && $2 != "-" { print $2 }' "${SITE_DIR}/features" 2>/dev/null || true)
    echo "CPUs=${cpus} RealMemory=${memory} Gres=gpu:${gpus}${features:+ Features=${features}}"
}

# Slurm keeps dynamic nodes in the order they first registered (a new node takes the lowest free
# slot of its node table) and lists, allocates and numbers them that way: nodes that registered
# in a race would read node[3,1,4,2] in squeue and sacct, and a 2-node job would land on whichever
# came first. So a node that is new to the controller registers only after its predecessor
# (node<k-1>) is known, which keeps node1..nodeN in order at the cost of a fraction of a second
# per node. The wait is bounded: a lone `docker compose up node7` still joins.
readonly REGISTER_IN_ORDER_WAIT_S=60
register_in_order() {
    local node index previous deadline
    node=$(hostname)
    index=${node##*[!0-9]}
    [[ -n ${index} ]] && (( index > 1 )) || return 0
    previous="${node%"${index}"}$(( index - 1 ))"
    deadline=$(( SECONDS + REGISTER_IN_ORDER_WAIT_S ))
    until scontrol show node "${node}" >/dev/null 2>&1 || scontrol show node "${previous}" >/dev/null 2>&1; do
        if (( SECONDS > deadline )); then
            log "${previous} has not joined after ${REGISTER_IN_ORDER_WAIT_S} s: ${node} registers without it"
            return
        fi
        sleep 0.2
    done
}

# A node that died while running a job may still be owed that job's TERMINATE_JOB: slurmctld
# keeps an RPC it could not deliver in its agent's retry list and sends it again every 60 s
# (agent.c, RPC_RETRY_INTERVAL). With the short requeue delay (cred_expire, slurm.conf) the
# requeued job can already be running on the returned node when that stale message arrives, and
# slurmd then kills the new run's tasks (same job id). So a node that restarts (its container ran
# before) rejoins drained, and is resumed as soon as the controller owes it nothing: no job the
# controller knows runs there, and the retry list, which sdiag prints under "Pending RPCs"
# (agent.c agent_pack_pending_rpc_stats, at most 1 s old), names no RPC for this node. A message
# is missing from that list only while an attempt is in flight, which ends within MessageTimeout
# (then it is delivered, or back in the list), so the check counts from MessageTimeout after the
# node has registered. A fresh container (make up) or a restarted controller has nothing pending
# and joins at once.
readonly REJOIN_MAX_WAIT_S=180
# What the controller still owes this node, one line per item (nothing: it owes nothing).
owed_to() {
    local node=$1 jobs pending type hostlist
    jobs=$(squeue -h -w "${node}" -o %i) || { echo "an answer (squeue failed)"; return; }
    [[ -z ${jobs} ]] || echo "the end of job(s) ${jobs//$'\n'/ }"
    pending=$(sdiag) || { echo "an answer (sdiag failed)"; return; }
    while read -r _ type hostlist; do
        [[ -n ${hostlist} ]] && scontrol show hostnames "${hostlist}" | grep -qxF "${node}" \
            && echo "${type}"
    done <<<"$(sed -n '/^Pending RPCs$/,$ { /^Pending RPCs$/d; p; }' <<<"${pending}")"
    return 0
}

resume_when_owed_nothing() {
    # A watcher in the background: a failing command must not end it (the node would stay
    # drained), so each result is checked where it is used.
    set +e
    local node=$1 started=${SECONDS} registered='' settle state owed said=''
    settle=$(scontrol show config | sed -n 's/^MessageTimeout *= *\([0-9]*\).*/\1/p')
    settle=$(( ${settle:-10} + 2 ))
    while (( SECONDS - started < REJOIN_MAX_WAIT_S )); do
        state=$(sinfo -h -n "${node}" -o %t 2>/dev/null | sort -u) || state=''
        if [[ -z ${registered} ]]; then
            [[ -z ${state} || ${state} == *'*' ]] || registered=${SECONDS}  # '*': not responding
        elif (( SECONDS - registered >= settle )); then
            owed=$(owed_to "${node}" | sort -u | paste -sd, -)
            if [[ -z ${owed} ]]; then
                scontrol update NodeName="${node}" State=RESUME \
                    && log "${node} resumed $(( SECONDS - started )) s after its restart: the controller owes it nothing" \
                    && return
            elif [[ ${owed} != "${said}" ]]; then
                log "${node} stays drained: the controller still owes it ${owed}"
                said=${owed}
            fi
        fi
        sleep 1
    done
    log "warning: ${node} still owed messages after ${REJOIN_MAX_WAIT_S} s; resuming it anyway"
    scontrol update NodeName="${node}" State=RESUME >/dev/null 2>&1 \
        || log "warning: could not resume ${node}: scontrol update NodeName=${node} State=RESUME"
}

readonly HOLD_REASON="rejoining after a restart: held until the controller owes it nothing"
hold_rejoining_node() {
    local node marker=/var/spool/slurmd/.slurmlab-started restarted=0 tries=0
    node=$(hostname)
    if [[ -e ${marker} ]]; then restarted=1; else touch "${marker}"; fi
    until "${RUNTIME}/healthcheck.sh" slurmctld 2>/dev/null; do  # the controller answers
        if (( ++tries >= 30 )); then
            (( ! restarted )) || log "controller not answering: ${node} rejoins without a hold"
            return
        fi
        sleep 1
    done
    if (( ! restarted )); then
        # A new container: held only if the one before it was replaced while held (the
        # controller keeps the drain), else it joins at once.
        [[ $(sinfo -h -n "${node}" -o %E 2>/dev/null | sort -u) == "${HOLD_REASON}" ]] || return 0
        log "${node} was held when its container was replaced: watching it again"
    else
        scontrol update NodeName="${node}" State=DRAIN Reason="${HOLD_REASON}" \
            || { log "warning: could not hold ${node} drained; it rejoins at once"; return; }
        log "${node} restarted: drained until the controller owes it nothing"
    fi
    # Twice forked, so that the watcher's parent is the init process, which reaps it, not slurmd.
    ( resume_when_owed_nothing "${node}" & )
}

run_slurmd() {
    start_munge
    link_slurm_config
    adopt_project_owner
    create_site_users
    write_login_env
    link_site_profile
    write_user_env_cache
    write_gres_conf
    install -d -m 0755 /var/spool/slurmd
    hold_rejoining_node
    register_in_order
    exec slurmd -D -Z --conf "$(node_definition)" -N "$(hostname)"
}

case ${1:-} in
    mariadb) run_mariadb ;;
    slurmdbd) run_slurmdbd ;;
    slurmctld) run_slurmctld ;;
    slurmd) run_slurmd ;;
    slurmrestd) run_slurmrestd ;;
    users) sync_users ;;
    "") die "no role given: expected one of mariadb, slurmdbd, slurmctld, slurmd, slurmrestd" ;;
    *) exec "$@" ;;
esac
