// The public REST API (docs/protocol.md) with the session's tokens: every request carries the
// access token, which is refreshed (rotating refresh token) a minute before it expires and
// once more on a 401, so the user never sees an expiry. The session lives in sessionStorage:
// one per tab, because a refresh token is single-use and two tabs sharing one would revoke
// each other (a reused refresh token revokes its session).

const KEY = 'parley.session';

export class ApiError extends Error {
  constructor(status, code, message, retryAfter) {
    super(message || code || `HTTP ${status}`);
    this.status = status;
    this.code = code || 'internal';
    this.retryAfter = retryAfter; // seconds, for 429 and 503
  }
}

export class Api {
  constructor(onSessionLost) {
    this.onSessionLost = onSessionLost;
    this.session = null;
    this.refreshing = null;
    this.timer = null;
    try {
      this.session = JSON.parse(sessionStorage.getItem(KEY) || 'null');
    } catch (e) {
      this.session = null;
    }
    if (this.session) this.schedule();
  }

  get user() {
    return this.session && this.session.user;
  }

  keep(user, tokens) {
    this.session = {
      user,
      access: tokens.access_token,
      refresh: tokens.refresh_token,
      expires: Date.now() + tokens.expires_in * 1000,
    };
    sessionStorage.setItem(KEY, JSON.stringify(this.session));
    this.schedule();
  }

  forget() {
    clearTimeout(this.timer);
    this.session = null;
    sessionStorage.removeItem(KEY);
  }

  schedule() {
    clearTimeout(this.timer);
    const s = this.session;
    const lifetime = s.expires - Date.now();
    // a minute early, or at 80 % of a short lifetime
    const wait = Math.max(1000, Math.min(lifetime - 60000, lifetime * 0.8));
    this.timer = setTimeout(() => this.refresh().catch(() => {}), wait);
  }

  // One refresh at a time; concurrent callers share it.
  refresh() {
    if (!this.session) return Promise.reject(new ApiError(401, 'unauthorized', 'signed out'));
    if (!this.refreshing) {
      const s = this.session;
      this.refreshing = this.raw('POST', '/v1/auth/refresh', { refresh_token: s.refresh }, null)
        .then((tokens) => {
          if (this.session === s) this.keep(s.user, tokens);
          return this.session.access;
        })
        .catch((e) => {
          // Only a refusal ends the session; a network error or a 503 is retried later.
          if (e.status === 401 || e.status === 403) {
            this.forget();
            this.onSessionLost();
          } else if (this.session) {
            clearTimeout(this.timer);
            this.timer = setTimeout(() => this.refresh().catch(() => {}), 5000);
          }
          throw e;
        })
        .finally(() => {
          this.refreshing = null;
        });
    }
    return this.refreshing;
  }

  // An access token valid for at least 30 more seconds.
  async token() {
    if (!this.session) throw new ApiError(401, 'unauthorized', 'signed out');
    if (this.session.expires - Date.now() < 30000) return this.refresh();
    return this.session.access;
  }

  async raw(method, path, body, token) {
    const headers = {};
    if (body !== undefined && body !== null) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = 'Bearer ' + token;
    let r;
    try {
      r = await fetch(path, {
        method,
        headers,
        body: body !== undefined && body !== null ? JSON.stringify(body) : undefined,
        cache: 'no-store',
      });
    } catch (e) {
      throw new ApiError(0, 'network', e.message);
    }
    if (r.status === 204) return null;
    let data = null;
    try {
      data = await r.json();
    } catch (e) {
      data = null;
    }
    if (!r.ok) {
      const err = (data && data.error) || {};
      const ra = parseFloat(r.headers.get('Retry-After') || '');
      throw new ApiError(r.status, err.code, err.message, Number.isFinite(ra) ? ra : undefined);
    }
    return data;
  }

  // An authenticated request; a 401 gets one refresh and one retry.
  async req(method, path, body) {
    const tok = await this.token();
    try {
      return await this.raw(method, path, body, tok);
    } catch (e) {
      if (e.status !== 401 || !this.session) throw e;
      const fresh = await this.refresh();
      return this.raw(method, path, body, fresh);
    }
  }

  async login(username, password) {
    const tokens = await this.raw('POST', '/v1/auth/login', { username, password, device: 'web' });
    this.keep(username.toLowerCase(), tokens);
  }

  register(username, password, displayName, locale, timeZone) {
    const body = { username, password, locale, time_zone: timeZone };
    if (displayName) body.display_name = displayName;
    return this.raw('POST', '/v1/auth/register', body);
  }

  async logout() {
    try {
      await this.req('POST', '/v1/auth/logout');
    } finally {
      this.forget();
    }
  }
}

// The words for an API error, in the user's language.
export function describeError(t, e, context) {
  if (!e || !(e instanceof ApiError)) return t('err_generic', { detail: String(e && e.message) });
  if (e.status === 0) return t('err_network');
  if (e.status === 429 || e.code === 'rate_limited') {
    return e.retryAfter ? t('err_rate_limited', { s: Math.ceil(e.retryAfter) }) : t('err_rate_limited_now');
  }
  if (context === 'login' && e.status === 401) return t('err_bad_login');
  if (context === 'register' && e.status === 409) return t('err_taken');
  if (e.status === 401) return t('err_session');
  switch (e.code) {
    case 'invalid':
      return t('err_invalid', { detail: e.message });
    case 'forbidden':
      return t('err_forbidden', { detail: e.message });
    case 'not_found':
      return t('err_not_found', { detail: e.message });
    case 'conflict':
      return t('err_conflict', { detail: e.message });
    case 'too_large':
      return t('err_too_large');
    case 'unavailable':
      return t('err_unavailable');
    default:
      if (e.status === 403) return t('err_forbidden', { detail: e.message });
      if (e.status === 404) return t('err_not_found', { detail: e.message });
      if (e.status === 409) return t('err_conflict', { detail: e.message });
      if (e.status === 400) return t('err_invalid', { detail: e.message });
      if (e.status === 503) return t('err_unavailable');
      return t('err_generic', { detail: e.message });
  }
}
