// Checks of the deployment files in deploy/ (deploy/README.md): the Kubernetes manifests (parsed with python3-yaml)
// against the memory plan of deploy/plan-resources.sh and against each other, the systemd template unit
// (systemd-analyze verify where systemd is installed, and its fields against packaging/lokal.service's sandbox),
// the Dockerfile (parsed: stages, packages, user, health check), and where `docker info` works, the image built and
// run for real. e2e/scaleout.test.mjs runs the nginx and HAProxy configurations.
// Run: LOKAL_BIN=build/src/lokal LOKAL_TEST_DATA=../shared node --test e2e/deploy.test.mjs
import { describe, test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, realpathSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { checkPrerequisites, modelPath, MODEL_ID, PARIS } from './server.mjs';

checkPrerequisites(); // fails the file with a clear message (run scripts/setup.sh, LOKAL_BIN, model)

const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const deploy = (...p) => path.join(repo, 'deploy', ...p);
const read = (p) => readFileSync(p, 'utf8');
const MODELS = path.dirname(modelPath());

// deploy/plan-resources.sh with `lokal plan` options; --format json.
function planResources(args) {
  const r = spawnSync(deploy('plan-resources.sh'), ['--format', 'json', ...args], {
    encoding: 'utf8', env: { ...process.env, LOKAL_BIN: process.env.LOKAL_BIN }, timeout: 60000,
  });
  assert.equal(r.status, 0, `plan-resources.sh ${args.join(' ')} failed (${r.status}): ${r.stderr}`);
  return JSON.parse(r.stdout);
}

// The value of `-x VALUE` among command-line words.
const optionValue = (words, ...names) => {
  const i = words.findIndex((w) => names.includes(w));
  return i >= 0 ? words[i + 1] : undefined;
};

// Kubernetes quantities as bytes / cores.
function bytesOf(q) {
  const m = /^(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?$/.exec(String(q));
  assert.ok(m, `memory quantity ${q}`);
  const unit = { undefined: 1, Ki: 1024, Mi: 1024 ** 2, Gi: 1024 ** 3, Ti: 1024 ** 4, k: 1e3, M: 1e6, G: 1e9, T: 1e12 }[m[2]];
  return Number(m[1]) * unit;
}
const coresOf = (q) => (String(q).endsWith('m') ? Number(String(q).slice(0, -1)) / 1000 : Number(q));

// The keys of a flat TOML file (the subset lokal's examples use: key = "string" | number | true/false).
function parseToml(text) {
  const out = {};
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#')) continue;
    const m = /^([A-Za-z0-9_]+)\s*=\s*(.+)$/.exec(line);
    assert.ok(m, `TOML line "${line}"`);
    out[m[1]] = JSON.parse(m[2]);
  }
  return out;
}

// An INI-style systemd unit: { Section: [[key, value], ...] } (repeated keys kept in order).
function parseUnit(text) {
  const sections = {};
  let cur = null;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const sec = /^\[(.+)\]$/.exec(line);
    if (sec) {
      cur = sections[sec[1]] = [];
      continue;
    }
    const kv = /^([A-Za-z]+)=(.*)$/.exec(line);
    assert.ok(cur && kv, `unit line "${line}"`);
    cur.push([kv[1], kv[2]]);
  }
  return sections;
}
const unitValues = (section, key) => section.filter(([k]) => k === key).map(([, v]) => v);

// Dockerfile instructions, continuation lines joined: [{ instr, args, stage }] (stage: index of the FROM).
function parseDockerfile(text) {
  const out = [];
  let buf = '';
  let stage = -1;
  for (const raw of text.split('\n')) {
    if (!buf && /^\s*(#|$)/.test(raw)) continue;
    if (/^\s*#/.test(raw)) continue; // a comment inside a continued instruction
    buf += `${raw.replace(/\\\s*$/, '')} `;
    if (/\\\s*$/.test(raw)) continue;
    const m = /^\s*([A-Za-z]+)\s+(.*?)\s*$/.exec(buf);
    assert.ok(m, `Dockerfile line "${buf}"`);
    const instr = m[1].toUpperCase();
    if (instr === 'FROM') stage += 1;
    out.push({ instr, args: m[2].replace(/\s+/g, ' '), stage });
    buf = '';
  }
  assert.equal(buf, '', 'the Dockerfile ends with a complete instruction');
  return out;
}

// The Debian packages an `apt-get install` in a RUN line names.
const aptPackages = (run) => {
  const m = /apt-get install ([^&;|]+)/.exec(run);
  return m ? m[1].split(' ').filter((w) => w && !w.startsWith('-')) : [];
};

// A Python 3 with yaml (Debian package python3-yaml): the YAML documents of a file as JSON.
let python = null;
function yamlDocuments(file) {
  if (!python) {
    python = ['python3', '/usr/bin/python3'].find((p) => spawnSync(p, ['-c', 'import yaml'], { stdio: 'ignore' }).status === 0);
    if (!python) throw new Error('python3 with the yaml module is missing: run scripts/setup.sh (Debian package python3-yaml)');
  }
  const out = execFileSync(python, ['-c', 'import json, sys, yaml; print(json.dumps([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None]))', file], { encoding: 'utf8' });
  return JSON.parse(out);
}

describe('Kubernetes manifests (deploy/k8s)', () => {
  const docs = {};
  let deployment;
  let pod;
  let container;
  let config;
  let plan;
  let planArgs;

  before(() => {
    const kustomization = yamlDocuments(deploy('k8s', 'kustomization.yaml'))[0];
    const files = readdirSync(deploy('k8s')).filter((f) => f.endsWith('.yaml') && f !== 'kustomization.yaml').sort();
    assert.deepEqual([...kustomization.resources].sort(), files, 'kustomization.yaml lists every manifest');
    for (const f of files) {
      for (const d of yamlDocuments(deploy('k8s', f))) {
        assert.ok(d.apiVersion && d.kind && d.metadata?.name, `${f}: apiVersion, kind and metadata.name`);
        docs[d.kind] = d;
      }
    }
    deployment = docs.Deployment;
    pod = deployment.spec.template;
    container = pod.spec.containers.find((c) => c.name === 'lokal');
    config = parseToml(docs.ConfigMap.data['lokal.toml']);
    planArgs = deployment.metadata.annotations['lokal/plan'].split(/\s+/);
    // The manifests name the model file; the test data holds it.
    const model = optionValue(planArgs, '-m', '--model');
    plan = planResources(planArgs.map((w) => (w === model ? path.join(MODELS, model) : w)));
  });

  test('every annotation and label value is a string (YAML would make true or 8080 something else)', () => {
    for (const d of [...Object.values(docs), pod]) {
      for (const [k, v] of Object.entries({ ...d.metadata?.annotations, ...d.metadata?.labels })) {
        assert.equal(typeof v, 'string', `${d.kind ?? 'pod template'} ${k}`);
      }
    }
  });

  test('resources are the memory plan of deploy/plan-resources.sh for the configured settings', () => {
    const { requests, limits } = container.resources;
    assert.equal(bytesOf(requests.memory), plan.memory_request_bytes, 'requests.memory');
    assert.equal(bytesOf(limits.memory), plan.memory_limit_bytes, 'limits.memory');
    assert.equal(coresOf(requests.cpu), plan.cpu_request, 'requests.cpu');
    assert.ok(plan.memory_request_bytes > plan.plan_total_bytes && plan.memory_limit_bytes > plan.memory_request_bytes);
    // The server runs with the settings the plan was made for.
    assert.equal(path.basename(config.model), optionValue(planArgs, '-m', '--model'), 'model');
    assert.equal(config.parallel, plan.settings.n_parallel, 'parallel');
    assert.equal(config.ctx_size, plan.settings.n_ctx, 'ctx_size');
    assert.equal(config.threads, plan.settings.n_threads, 'threads');
    for (const k of ['cache_type_k', 'cache_type_v']) assert.equal(config[k] ?? 'f16', plan.settings[k], k);
  });

  test('startup, readiness and liveness probes on GET /health at the server port', () => {
    const port = container.ports.find((p) => p.name === 'http');
    assert.equal(port.containerPort, config.port, 'containerPort is the configured port');
    for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
      const p = container[probe];
      assert.ok(p?.httpGet, `${probe}.httpGet`);
      assert.equal(p.httpGet.path, '/health', `${probe} path`);
      assert.ok(p.httpGet.port === 'http' || p.httpGet.port === port.containerPort, `${probe} port`);
    }
    // Loading may take minutes: the startup probe allows it before liveness can kill the pod.
    assert.ok(container.startupProbe.periodSeconds * container.startupProbe.failureThreshold >= 120);
  });

  test('Service, selectors and the disruption budget match the pod labels', () => {
    const labels = pod.metadata.labels;
    const within = (sel, what) => {
      assert.ok(Object.keys(sel).length > 0, `${what} is not empty`);
      for (const [k, v] of Object.entries(sel)) assert.equal(labels[k], v, `${what} ${k}`);
    };
    within(deployment.spec.selector.matchLabels, 'Deployment selector');
    within(docs.Service.spec.selector, 'Service selector');
    within(docs.PodDisruptionBudget.spec.selector.matchLabels, 'PodDisruptionBudget selector');
    const sp = docs.Service.spec.ports[0];
    assert.ok(sp.targetPort === 'http' || sp.targetPort === config.port, 'Service targetPort is the server port');
    assert.equal(deployment.spec.strategy.rollingUpdate.maxUnavailable, 0, 'a rollout never lowers the ready replicas');
  });

  test('Prometheus scrape annotations name the metrics port and path, and metrics are on', () => {
    const a = pod.metadata.annotations;
    assert.equal(a['prometheus.io/scrape'], 'true');
    assert.equal(a['prometheus.io/port'], String(config.port));
    assert.equal(a['prometheus.io/path'], '/metrics');
    assert.equal(config.metrics, true, 'lokal.toml turns /metrics on');
  });

  test('non-root, read-only, no privileges; the models volume is read-only; keys for a non-loopback address', () => {
    const psc = pod.spec.securityContext;
    assert.equal(psc.runAsNonRoot, true);
    assert.ok(Number.isInteger(psc.runAsUser) && psc.runAsUser > 0, 'runAsUser is a non-root uid');
    const dockerUser = parseDockerfile(read(deploy('Dockerfile'))).filter((i) => i.instr === 'USER').pop().args.split(':')[0];
    assert.equal(String(psc.runAsUser), dockerUser, "runAsUser is the image's user");
    const csc = container.securityContext;
    assert.equal(csc.allowPrivilegeEscalation, false);
    assert.equal(csc.readOnlyRootFilesystem, true);
    assert.deepEqual(csc.capabilities.drop, ['ALL']);
    const models = container.volumeMounts.find((m) => config.model.startsWith(`${m.mountPath}/`));
    assert.ok(models, `a volume is mounted where the model ${config.model} is`);
    assert.equal(models.readOnly, true, 'the models mount is read-only');
    const vol = pod.spec.volumes.find((v) => v.name === models.name);
    assert.equal(vol.persistentVolumeClaim?.readOnly, true, 'the models claim is mounted read-only');
    const pvc = docs.PersistentVolumeClaim;
    assert.equal(vol.persistentVolumeClaim.claimName, pvc.metadata.name);
    assert.deepEqual(pvc.spec.accessModes, ['ReadOnlyMany']);
    assert.notEqual(config.host, '127.0.0.1');
    const keys = container.env.find((e) => e.name === 'LOKAL_API_KEY' || e.name === 'LOKAL_API_KEY_FILE');
    assert.ok(keys?.valueFrom?.secretKeyRef, 'API keys come from a Secret');
    assert.deepEqual(container.args, ['serve', '--config', '/etc/lokal/lokal.toml']);
    assert.ok(container.volumeMounts.some((m) => m.mountPath === '/etc/lokal' && m.readOnly), 'the config is mounted');
    // SIGTERM drains for drain_timeout after the preStop pause; the grace period covers both.
    const pause = Number(container.lifecycle.preStop.exec.command.at(-1));
    assert.ok(pod.spec.terminationGracePeriodSeconds > config.drain_timeout + pause, 'terminationGracePeriodSeconds');
  });

  test('kubectl kustomize renders them (where kubectl is installed)', (t) => {
    const r = spawnSync('kubectl', ['kustomize', deploy('k8s')], { encoding: 'utf8', timeout: 30000 });
    if (r.error?.code === 'ENOENT') {
      t.skip('kubectl is not installed: the YAML checks above stand alone');
      return;
    }
    assert.equal(r.status, 0, `kubectl kustomize: ${r.stderr}`);
    assert.match(r.stdout, /kind: Deployment/);
  });
});

describe('deploy/plan-resources.sh', () => {
  const args = ['-m', modelPath(), '-np', '4', '-c', '512', '-t', '2'];
  const run = (format, extra = args) => spawnSync(deploy('plan-resources.sh'), ['--format', format, ...extra], { encoding: 'utf8', timeout: 60000 });

  test('every format gives the same numbers', () => {
    const j = planResources(args);
    const env = Object.fromEntries(run('env').stdout.trim().split('\n').map((l) => l.split('=')));
    assert.equal(Number(env.MEMORY_REQUEST_BYTES), j.memory_request_bytes);
    assert.equal(Number(env.MEMORY_LIMIT_BYTES), j.memory_limit_bytes);
    assert.equal(Number(env.PLAN_TOTAL_BYTES), j.plan_total_bytes);
    assert.equal(Number(env.PARALLEL), 4);
    assert.equal(Number(env.CTX_SIZE), 512);
    const mib = (b) => b / 1048576;
    assert.match(run('k8s').stdout, new RegExp(`requests:\\n    memory: ${mib(j.memory_request_bytes)}Mi\\n    cpu: "2"\\n  limits:\\n    memory: ${mib(j.memory_limit_bytes)}Mi`));
    assert.equal(run('docker').stdout.trim(), `--memory=${mib(j.memory_limit_bytes)}m --memory-reservation=${mib(j.memory_request_bytes)}m --memory-swap=${mib(j.memory_limit_bytes)}m --cpus=2`);
    assert.match(run('systemd').stdout, new RegExp(`\\[Service\\]\\nMemoryHigh=${mib(j.memory_request_bytes)}M\\nMemoryMax=${mib(j.memory_limit_bytes)}M`));
    // The plan itself: weights + KV + compute + overhead, as `lokal plan` says.
    const p = JSON.parse(execFileSync(process.env.LOKAL_BIN, ['plan', '--json', '--ram', '1TiB', ...args], { encoding: 'utf8' }));
    assert.equal(j.plan_total_bytes, p.total_bytes);
  });

  test('a plan that does not fit, or no model, is an error with a message', () => {
    const small = run('env', [...args, '--ram', '1MiB']);
    assert.equal(small.status, 1);
    assert.match(small.stderr, /does not fit/);
    const none = run('env', ['-m', path.join(MODELS, 'no-such-model.gguf')]);
    assert.equal(none.status, 1);
    assert.match(none.stderr, /gave no plan/);
    assert.equal(run('yaml').status, 2);
  });
});

describe('systemd template unit (deploy/systemd/lokal@.service)', () => {
  const unitFile = deploy('systemd', 'lokal@.service');
  const unit = parseUnit(read(unitFile));
  const svc = unit.Service;
  const one = (key) => {
    const v = unitValues(svc, key);
    assert.equal(v.length, 1, `exactly one ${key}=`);
    return v[0];
  };

  test('a notify service on the port of its instance name', () => {
    assert.equal(one('Type'), 'notify');
    assert.match(one('ExecStart'), /^\/usr\/local\/bin\/lokal serve --config \/etc\/lokal\/lokal\.toml .*--port %i( |$)/);
    assert.match(one('StateDirectory'), /%i/, 'each replica its own state directory');
    assert.equal(one('Restart'), 'on-failure');
    assert.ok(Number(one('TimeoutStopSec')) > 30, 'TimeoutStopSec covers the 30-second drain');
    for (const f of unitValues(svc, 'EnvironmentFile')) assert.ok(f.startsWith('-/etc/lokal/'), `optional EnvironmentFile ${f}`);
    assert.match(unit.Unit.find(([k]) => k === 'Description')[1], /%i/);
    assert.deepEqual(unitValues(unit.Install, 'WantedBy'), ['multi-user.target']);
  });

  test("the sandbox and watchdog of packaging/lokal.service, line for line", () => {
    const packaged = parseUnit(read(path.join(repo, 'packaging', 'lokal.service'))).Service;
    const keep = new Set(['WatchdogSec', 'NotifyAccess', 'UMask', 'TimeoutStartSec', 'DynamicUser', 'ProtectSystem', 'ProtectHome',
      'PrivateTmp', 'PrivateDevices', 'NoNewPrivileges', 'ProtectKernelTunables', 'ProtectKernelModules', 'ProtectKernelLogs',
      'ProtectControlGroups', 'ProtectClock', 'ProtectHostname', 'RestrictAddressFamilies', 'RestrictNamespaces',
      'RestrictSUIDSGID', 'RestrictRealtime', 'LockPersonality', 'MemoryDenyWriteExecute', 'RemoveIPC',
      'SystemCallArchitectures', 'SystemCallFilter', 'SystemCallErrorNumber', 'CapabilityBoundingSet', 'AmbientCapabilities']);
    const hardening = packaged.filter(([k]) => keep.has(k));
    assert.ok(hardening.length >= 25, 'packaging/lokal.service has its sandbox');
    for (const [k, v] of hardening) assert.deepEqual(unitValues(svc, k), [v], `${k}=${v}`);
  });

  test('systemd-analyze verify accepts an instance (where systemd is installed)', (t) => {
    if (spawnSync('systemd-analyze', ['--version'], { stdio: 'ignore' }).error) {
      t.skip('systemd-analyze is not installed: the field checks above stand alone');
      return;
    }
    const dir = mkdtempSync(path.join(os.tmpdir(), 'lokal-unit-'));
    try {
      // The binary must exist for verify: this build's stands in for /usr/local/bin/lokal.
      const inst = path.join(dir, 'lokal@8081.service');
      writeFileSync(inst, read(unitFile).replace('/usr/local/bin/lokal', path.resolve(process.env.LOKAL_BIN)));
      const r = spawnSync('systemd-analyze', ['verify', inst], { encoding: 'utf8', timeout: 60000 });
      const complaints = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('lokal@'));
      assert.equal(r.status, 0, `systemd-analyze verify: ${r.stdout}${r.stderr}`);
      assert.deepEqual(complaints, [], 'no warnings about the unit');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('replicas.env.example sets options lokal serve accepts', () => {
    const vars = read(deploy('systemd', 'replicas.env.example')).split('\n').filter((l) => l.trim() && !l.startsWith('#'));
    const env = Object.fromEntries(vars.map((l) => {
      const m = /^(LOKAL_[A-Z_]+)=(.+)$/.exec(l);
      assert.ok(m, `env line "${l}"`);
      return [m[1], m[2]];
    }));
    const out = execFileSync(process.env.LOKAL_BIN, ['serve', '-m', modelPath(), '--print-config'], {
      encoding: 'utf8', env: { PATH: process.env.PATH, ...env },
    });
    for (const [k, v] of Object.entries(env)) {
      const key = k.slice('LOKAL_'.length).toLowerCase();
      assert.match(out, new RegExp(`^${key} = "?${v}"?$`, 'm'), `${k}=${v} reaches lokal serve as ${key}`);
    }
  });
});

describe('container image (deploy/Dockerfile)', () => {
  const file = deploy('Dockerfile');
  const ins = parseDockerfile(read(file));
  const stages = ins.filter((i) => i.instr === 'FROM');
  const last = stages.length - 1;
  const inStage = (s, instr) => ins.filter((i) => i.stage === s && i.instr === instr);
  // ARG defaults before the first FROM, for the base images.
  const args = Object.fromEntries(ins.filter((i) => i.instr === 'ARG' && i.stage === -1).map((i) => i.args.split('=')));
  const image = (from) => from.split(' ')[0].replace(/^\$\{?(\w+)\}?$/, (_, a) => args[a]);

  test('a multi-stage build on Debian 12', () => {
    assert.ok(stages.length >= 2, 'a build stage and a runtime stage');
    for (const s of stages) assert.match(image(s.args), /^debian:12(-slim)?$/, `FROM ${s.args}`);
    assert.match(stages[0].args, / AS build$/i);
    assert.ok(inStage(last, 'COPY').some((c) => /^--from=build \S+\/lokal \/usr\/local\/bin\/lokal$/.test(c.args)), 'the runtime stage takes only the binary');
    const build = inStage(0, 'RUN').map((r) => r.args).join(' ');
    assert.match(build, /cmake -S \. -B build .*-DCMAKE_BUILD_TYPE=Release/);
    assert.match(build, /cmake --build build --target lokal/);
    // The build stage installs what scripts/setup.sh installs for the binary (toolchain and -dev packages).
    const pkgs = inStage(0, 'RUN').flatMap((r) => aptPackages(r.args));
    const setup = read(path.join(repo, 'scripts', 'setup.sh'));
    for (const p of ['build-essential', 'cmake', 'ninja-build', 'pkg-config', 'libcli11-dev', 'nlohmann-json3-dev', 'libpcre2-dev',
      'libcpp-httplib-dev', 'libssl-dev', 'libjwt-dev', 'libsystemd-dev', 'libtomlplusplus-dev', 'zlib1g-dev', 'libjs-marked',
      'libjs-highlight.js', 'node-dompurify']) {
      assert.ok(setup.includes(` ${p} `) || setup.includes(` ${p}\n`), `scripts/setup.sh still installs ${p}`);
      assert.ok(pkgs.includes(p), `the build stage installs ${p}`);
    }
  });

  test('the runtime stage installs the Debian package of every library lokal links', (t) => {
    const runtime = inStage(last, 'RUN').flatMap((r) => aptPackages(r.args));
    const needed = execFileSync('readelf', ['-d', process.env.LOKAL_BIN], { encoding: 'utf8' })
      .split('\n').map((l) => /\(NEEDED\)\s+Shared library: \[(.+)\]/.exec(l)?.[1]).filter(Boolean);
    assert.ok(needed.length > 3, `readelf found the libraries: ${needed}`);
    // In every Debian image (the C library, the C++ runtime apt itself needs).
    const base = new Set(['libc6', 'libstdc++6', 'libgcc-s1']);
    // Where the loader finds each library here, and the Debian package that ships that file (merged /usr: dpkg may
    // know it under /usr/lib or /lib).
    const paths = Object.fromEntries(execFileSync('ldd', [process.env.LOKAL_BIN], { encoding: 'utf8' }).split('\n')
      .map((l) => /^\s*(\S+) => (\/\S+)/.exec(l)).filter(Boolean).map((m) => [m[1], m[2]]));
    // The image is a Release build: a sanitizer runtime (CI also runs these tests against an ASan+UBSan lokal) is not
    // something the image needs.
    for (const lib of needed.filter((l) => !/^lib(asan|ubsan|lsan|tsan)\.so/.test(l))) {
      assert.ok(paths[lib], `ldd finds ${lib}`);
      const candidates = [paths[lib], realpathSync(paths[lib])].flatMap((p) => [p, p.replace(/^\/usr\/lib\//, '/lib/'), p.replace(/^\/lib\//, '/usr/lib/')]);
      const owner = candidates.map((p) => spawnSync('dpkg', ['-S', p], { encoding: 'utf8' })).find((r) => r.status === 0);
      assert.ok(owner, `dpkg knows the package of ${paths[lib]}`);
      const pkg = owner.stdout.split(':')[0];
      t.diagnostic(`${lib}: ${pkg}`);
      assert.ok(base.has(pkg) || runtime.includes(pkg), `the runtime stage installs ${pkg} (for ${lib})`);
    }
  });

  test('an unprivileged user, a health check on /health, the config and the port agree', () => {
    const user = inStage(last, 'USER');
    assert.equal(user.length, 1);
    const [uid, gid] = user[0].args.split(':');
    assert.match(uid, /^[1-9]\d*$/, 'USER is a numeric non-root uid (runAsNonRoot can check it)');
    assert.match(gid ?? '', /^[1-9]\d*$/, 'and a non-root group');
    assert.ok(inStage(last, 'RUN').some((r) => r.args.includes(`useradd --system --uid ${uid} `)), 'the user exists in /etc/passwd');
    assert.ok(ins.findIndex((i) => i.instr === 'USER') > ins.findIndex((i) => i.stage === last && i.instr === 'RUN'), 'USER after the root RUN steps');
    const hc = inStage(last, 'HEALTHCHECK');
    assert.equal(hc.length, 1);
    assert.match(hc[0].args, /--start-period=\d+s/);
    assert.match(hc[0].args, /CMD .*http:\/\/127\.0\.0\.1:\$\{LOKAL_PORT:-8080\}\/health/);
    assert.ok(inStage(last, 'RUN').some((r) => aptPackages(r.args).includes('curl')), 'curl for the health check');
    const conf = parseToml(read(deploy('docker', 'lokal.toml')));
    assert.equal(inStage(last, 'EXPOSE')[0].args, String(conf.port));
    assert.equal(conf.port, 8080, 'the health check default port');
    assert.equal(conf.host, '0.0.0.0');
    assert.match(conf.model, /^\/models\//, 'the model comes from the /models volume');
    assert.ok(inStage(last, 'COPY').some((c) => c.args === 'deploy/docker/lokal.toml /etc/lokal/lokal.toml'));
    assert.equal(inStage(last, 'ENTRYPOINT')[0].args, '["/usr/local/bin/lokal"]');
    assert.equal(inStage(last, 'CMD')[0].args, '["serve", "--config", "/etc/lokal/lokal.toml"]');
    // The run command in the header mounts the models read-only and takes the memory limit from the planner.
    const header = read(file).split('\n').filter((l) => l.startsWith('#')).join('\n');
    assert.match(header, /-v \/srv\/models:\/models:ro/);
    assert.match(header, /--read-only/);
    assert.match(header, /\$\(deploy\/plan-resources\.sh --format docker /);
  });

  test('.dockerignore lets in exactly what the build stage copies', () => {
    const ignore = read(path.join(repo, '.dockerignore')).split('\n').filter((l) => l.trim() && !l.startsWith('#'));
    assert.equal(ignore[0], '*', 'everything else stays out of the build context');
    const allowed = ignore.slice(1).map((l) => l.replace(/^!/, '').replace(/\/$/, ''));
    const copied = ins.filter((i) => i.instr === 'COPY' && !i.args.startsWith('--from'))
      .flatMap((c) => c.args.split(' ').slice(0, -1));
    for (const c of copied) {
      assert.ok(allowed.some((a) => c.replace(/\/$/, '') === a || c.startsWith(`${a}/`)), `.dockerignore lets ${c} in`);
      assert.ok(existsSync(path.join(repo, c)), `${c} exists`);
    }
  });
});

// The image built and run for real: only where a Docker daemon answers (`docker info`), unless LOKAL_E2E_DOCKER=0.
// The build compiles lokal (minutes on a cold cache).
const dockerWorks = process.env.LOKAL_E2E_DOCKER !== '0'
  && spawnSync('docker', ['info'], { stdio: 'ignore', timeout: 20000 }).status === 0;

describe('container image built and run (where `docker info` works)', { timeout: 1500000 }, () => {
  const tag = 'lokal:e2e-deploy-test';
  const name = `lokal-e2e-${process.pid}`;
  const docker = (args, opts = {}) => spawnSync('docker', args, { encoding: 'utf8', timeout: 60000, ...opts });

  after(() => {
    if (dockerWorks) docker(['rm', '-f', name]);
  });

  test('docker build, then run read-only as non-root with the planned memory limit: healthy, answers, drains', { timeout: 1500000 }, async (t) => {
    if (!dockerWorks) {
      t.skip('no Docker daemon (`docker info` fails) or LOKAL_E2E_DOCKER=0: the Dockerfile checks above stand alone');
      return;
    }
    const began = Date.now();
    const build = docker(['build', '-f', 'deploy/Dockerfile', '-t', tag, '.'], { cwd: repo, timeout: 1200000 });
    assert.equal(build.status, 0, `docker build:\n${build.stdout.slice(-3000)}\n${build.stderr.slice(-3000)}`);
    t.diagnostic(`docker build: ${Math.round((Date.now() - began) / 1000)} s`);

    const planArgs = ['-m', modelPath(), '-np', '2', '-c', '512', '-t', '1'];
    const limits = execFileSync(deploy('plan-resources.sh'), ['--format', 'docker', ...planArgs], { encoding: 'utf8' }).trim().split(' ');
    const plan = planResources(planArgs);
    const run = docker(['run', '-d', '--name', name, '-p', '127.0.0.1::8080', '--read-only', '--cap-drop', 'ALL',
      '--security-opt', 'no-new-privileges', '--stop-timeout', '45', ...limits,
      '-v', `${MODELS}:/models:ro`, '-e', `LOKAL_MODEL=/models/${path.basename(modelPath())}`, '-e', 'LOKAL_API_KEY=e2e-test-key',
      '-e', 'LOKAL_PARALLEL=2', '-e', 'LOKAL_CTX_SIZE=512', '-e', 'LOKAL_THREADS=1', tag]);
    assert.equal(run.status, 0, `docker run: ${run.stderr}`);
    const logs = () => { const l = docker(['logs', name]); return `${l.stdout}${l.stderr}`.slice(-3000); };

    // HEALTHCHECK turns the container healthy (first check after its 10-second interval).
    const deadline = Date.now() + 90000;
    for (;;) {
      const s = docker(['inspect', '-f', '{{.State.Status}} {{.State.Health.Status}}', name]).stdout.trim();
      if (s === 'running healthy') break;
      assert.ok(!s.startsWith('exited') && Date.now() < deadline, `container state "${s}"; logs:\n${logs()}`);
      await new Promise((r) => setTimeout(r, 1000));
    }
    t.diagnostic(`container healthy ${Math.round((Date.now() - began) / 1000)} s after the build began`);
    const port = docker(['port', name, '8080/tcp']).stdout.trim().split('\n')[0].split(':').pop();
    const base = `http://127.0.0.1:${port}`;
    assert.equal((await fetch(`${base}/health`)).status, 200);
    assert.equal((await fetch(`${base}/v1/models`)).status, 401, 'keys are required on 0.0.0.0');
    const r = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer e2e-test-key' },
      body: JSON.stringify({ model: MODEL_ID, messages: [{ role: 'user', content: 'What is the capital of France?' }], max_tokens: 12, temperature: 0 }),
    });
    assert.equal(r.status, 200, await r.clone().text());
    assert.equal((await r.json()).choices[0].message.content, PARIS);

    const info = JSON.parse(docker(['inspect', name]).stdout)[0];
    assert.equal(info.Config.User, '10001:10001');
    assert.equal(info.HostConfig.ReadonlyRootfs, true);
    assert.equal(info.HostConfig.Memory, plan.memory_limit_bytes, 'the memory limit is the planned one');
    assert.equal(info.Mounts.find((m) => m.Destination === '/models')?.RW, false, 'the models are mounted read-only');
    assert.equal(docker(['exec', name, 'id', '-u']).stdout.trim(), '10001');
    assert.notEqual(docker(['exec', name, 'touch', '/models/x']).status, 0, '/models is not writable');

    // docker stop: SIGTERM, drain, exit 0.
    const stop = docker(['stop', name], { timeout: 60000 });
    assert.equal(stop.status, 0, stop.stderr);
    assert.equal(docker(['inspect', '-f', '{{.State.ExitCode}}', name]).stdout.trim(), '0', `exit code; logs:\n${logs()}`);
  });
});

describe('deploy/README.md', () => {
  test('describes every file in deploy/', () => {
    const readme = read(deploy('README.md'));
    const walk = (d) => readdirSync(d, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(path.join(d, e.name)) : [path.join(d, e.name)]));
    for (const f of walk(deploy()).map((f) => path.relative(deploy(), f)).filter((f) => f !== 'README.md')) {
      assert.ok(readme.includes(f), `deploy/README.md mentions ${f}`);
    }
    for (const cmd of ['systemctl enable --now lokal@8081 lokal@8082', 'docker build -f deploy/Dockerfile', 'kubectl apply -k deploy/k8s']) {
      assert.ok(readme.includes(cmd), `deploy/README.md shows ${cmd}`);
    }
  });
});
