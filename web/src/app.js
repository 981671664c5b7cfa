// Parley's web client: the screens. State and sync rules are in chat.js, the API and tokens in
// api.js, the connection in conn.js, strings and dates in i18n.js. Preact with htm (tagged
// templates, no build step).
import { html, render, useState, useEffect, useRef, useLayoutEffect, useReducer } from './vendor/preact-htm.js';
import { Api, ApiError, describeError } from './api.js';
import { Chat, directConv } from './chat.js';
import { makeI18n, pickLocale, pickZone, LANGUAGES } from './i18n.js';

const LOCALE_KEY = 'parley.locale';

// ---- sign in and sign up ----

function Auth({ i, api, onSignedIn, setLocale }) {
  const { t } = i;
  const [mode, setMode] = useState('login');
  const [username, setUsername] = useState('');
  const [password, setPassword] = useState('');
  const [display, setDisplay] = useState('');
  const [error, setError] = useState(null);
  const [busy, setBusy] = useState(false);

  const submit = async (ev) => {
    ev.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === 'register') {
        try {
          await api.register(username, password, display, i.locale, Intl.DateTimeFormat().resolvedOptions().timeZone);
        } catch (e) {
          setError(describeError(t, e, 'register'));
          return;
        }
      }
      try {
        await api.login(username, password);
      } catch (e) {
        setError(describeError(t, e, 'login'));
        return;
      }
      onSignedIn();
    } finally {
      setBusy(false);
    }
  };

  return html`
    <main class="auth">
      <h1>${t('app_name')}</h1>
      <${LanguagePicker} i=${i} setLocale=${setLocale} />
      <form onSubmit=${submit} aria-label=${mode === 'login' ? t('sign_in') : t('sign_up')}>
        <label>${t('username')}
          <input name="username" autocomplete="username" required value=${username}
                 onInput=${(e) => setUsername(e.target.value)} /></label>
        <label>${t('password')}
          <input name="password" type="password" required
                 autocomplete=${mode === 'login' ? 'current-password' : 'new-password'}
                 value=${password} onInput=${(e) => setPassword(e.target.value)} /></label>
        ${mode === 'register' &&
        html`<label>${t('display_name')}
          <input name="display_name" value=${display} onInput=${(e) => setDisplay(e.target.value)} /></label>`}
        ${error && html`<p class="error" role="alert">${error}</p>`}
        <button type="submit" disabled=${busy}>${mode === 'login' ? t('sign_in') : t('sign_up')}</button>
      </form>
      <button class="link" type="button" onClick=${() => { setMode(mode === 'login' ? 'register' : 'login'); setError(null); }}>
        ${mode === 'login' ? t('need_account') : t('have_account')}
      </button>
    </main>`;
}

function LanguagePicker({ i, setLocale }) {
  return html`
    <label class="lang">${i.t('language')}
      <select name="language" value=${i.locale} onChange=${(e) => setLocale(e.target.value)}>
        ${LANGUAGES.map(([tag, name]) => html`<option value=${tag} selected=${tag === i.locale}>${name}</option>`)}
      </select>
    </label>`;
}

// ---- the signed-in screens ----

function Dot({ status }) {
  return html`<span class=${'dot ' + (status === 'online' ? 'on' : 'off')} aria-hidden="true"></span>`;
}

function presenceText(i, p) {
  if (!p) return '';
  if (p.status === 'online') return i.t('online');
  if (p.last_seen) return i.t('last_seen', { when: i.when(Date.parse(p.last_seen)) + ' ' + i.time(Date.parse(p.last_seen)) });
  return i.t('offline');
}

function convTitle(chat, c) {
  if (c.kind === 'g') return c.name || c.conv;
  const p = chat.peer(c);
  const k = chat.contacts.find((x) => x.user === p);
  return (k && k.display_name) || p;
}

function previewOf(i, chat, c) {
  const it = c.last_item;
  if (!it) return '';
  // a recalled item keeps its place with its words erased (history and the list say so by
  // an empty content)
  if (it.recalled || it.kind === 'recall' || (it.kind === 'text' && it.content === '')) return i.t('recalled');
  if (it.kind === 'system') return systemText(i, chat, it.sender, it.event) || '';
  const who = it.sender === chat.me ? i.t('you') : it.sender;
  return (c.kind === 'g' || it.sender === chat.me ? who + ': ' : '') + it.content;
}

function ConvList({ i, chat }) {
  const { t } = i;
  const list = chat.list();
  if (!list.length) return html`<p class="empty">${t('no_chats')}</p>`;
  return html`
    <ul class="convs" aria-label=${t('chats')}>
      ${list.map((c) => {
        const peer = chat.peer(c);
        const p = peer && chat.presence.get(peer);
        return html`
          <li key=${c.conv}>
            <button class=${'conv' + (chat.openId === c.conv ? ' active' : '')} data-conv=${c.conv}
                    onClick=${() => chat.open(c.conv)}>
              <span class="title">${peer && html`<${Dot} status=${p && p.status} />`}${convTitle(chat, c)}</span>
              ${c.last_timestamp && html`<time class="when" datetime=${c.last_timestamp}>${i.when(Date.parse(c.last_timestamp))}</time>`}
              <span class="preview">${previewOf(i, chat, c)}</span>
              ${c.unread > 0 &&
              html`<span class="badge" aria-label=${t('unread', { n: c.unread })}>${c.unread > 99 ? '99+' : c.unread}</span>`}
            </button>
          </li>`;
      })}
    </ul>`;
}

function Contacts({ i, chat, onOpen, say }) {
  const { t } = i;
  const [user, setUser] = useState('');
  const act = (f) => async (...a) => {
    try {
      await f(...a);
    } catch (e) {
      say({ error: e });
    }
  };
  const add = act(async (ev) => {
    ev.preventDefault();
    const name = user.trim().toLowerCase();
    if (!name) return;
    const r = await chat.addContact(name);
    setUser('');
    say({ text: r.state === 'accepted' ? t('now_contacts', { user: name }) : t('request_sent', { user: name }) });
  });
  const by = (s) => chat.contacts.filter((k) => k.state === s);
  const row = (k, buttons) => html`
    <li key=${k.user} class="contact" data-user=${k.user}>
      ${k.state === 'accepted' && html`<${Dot} status=${(chat.presence.get(k.user) || {}).status} />`}
      <span class="name">${k.display_name || k.user}${k.display_name && k.display_name !== k.user ? html` <small>@${k.user}</small>` : ''}</span>
      ${k.state === 'accepted' && html`<small class="presence">${presenceText(i, chat.presence.get(k.user))}</small>`}
      <span class="actions">${buttons}</span>
    </li>`;
  return html`
    <section class="contacts" aria-label=${t('contacts')}>
      <form onSubmit=${add} class="inline">
        <label class="sr" for="add-contact">${t('add_contact')}</label>
        <input id="add-contact" name="add_contact" placeholder=${t('contact_username')} value=${user}
               onInput=${(e) => setUser(e.target.value)} />
        <button type="submit">${t('add')}</button>
      </form>
      ${by('incoming').length > 0 && html`<h3>${t('requests_in')}</h3>
        <ul>${by('incoming').map((k) => row(k, html`
          <button onClick=${act(() => chat.acceptContact(k.user))}>${t('accept')}</button>
          <button class="secondary" onClick=${act(() => chat.removeContact(k.user))}>${t('decline')}</button>`))}</ul>`}
      ${by('outgoing').length > 0 && html`<h3>${t('requests_out')}</h3>
        <ul>${by('outgoing').map((k) => row(k, html`
          <small>${t('requested')}</small>
          <button class="secondary" onClick=${act(() => chat.removeContact(k.user))}>${t('cancel_request')}</button>`))}</ul>`}
      <h3>${t('your_contacts')}</h3>
      ${by('accepted').length === 0 ? html`<p class="empty">${t('no_contacts')}</p>` : html`
        <ul>${by('accepted').map((k) => row(k, html`
          <button onClick=${() => onOpen(directConv(chat.me, k.user))}>${t('message_action')}</button>
          <button class="secondary" onClick=${act(() => chat.removeContact(k.user))}>${t('remove')}</button>
          <button class="secondary" onClick=${act(() => chat.block(k.user, true))}>${t('block')}</button>`))}</ul>`}
      ${chat.blocks.length > 0 && html`<h3>${t('blocked_users')}</h3>
        <ul>${chat.blocks.map((b) => html`<li key=${b.user} class="contact"><span class="name">${b.user}</span>
          <span class="actions"><button class="secondary" onClick=${act(() => chat.block(b.user, false))}>${t('unblock')}</button></span></li>`)}</ul>`}
    </section>`;
}

function NewGroup({ i, chat, onOpen, say }) {
  const { t } = i;
  const [name, setName] = useState('');
  const [members, setMembers] = useState('');
  const submit = async (ev) => {
    ev.preventDefault();
    const users = members.split(/[,\s，、]+/).map((s) => s.trim().toLowerCase()).filter(Boolean);
    try {
      const conv = await chat.createGroup(name.trim(), users);
      setName('');
      setMembers('');
      onOpen(conv);
    } catch (e) {
      say({ error: e });
    }
  };
  return html`
    <form class="newgroup" onSubmit=${submit} aria-label=${t('new_group')}>
      <h3>${t('new_group')}</h3>
      <label>${t('group_name')}<input name="group_name" required value=${name} onInput=${(e) => setName(e.target.value)} /></label>
      <label>${t('group_members')}<input name="group_members" value=${members} onInput=${(e) => setMembers(e.target.value)} /></label>
      <button type="submit">${t('create')}</button>
    </form>`;
}

function Settings({ i, chat, say }) {
  const { t } = i;
  const [s, setS] = useState(null);
  useEffect(() => {
    chat.api.req('GET', '/v1/users/me/settings').then(setS, (e) => say({ error: e }));
  }, []);
  if (!s) return html`<p class="empty">${t('loading')}</p>`;
  const change = async (key, value) => {
    try {
      setS(await chat.api.req('PATCH', '/v1/users/me/settings', { [key]: value }));
      say({ text: t('settings_saved') });
    } catch (e) {
      say({ error: e });
    }
  };
  return html`
    <form class="settings" aria-label=${t('settings')} onSubmit=${(e) => e.preventDefault()}>
      <h3>${t('privacy')}</h3>
      <label>${t('who_can_message')}
        <select name="who_can_message" value=${s.who_can_message} onChange=${(e) => change('who_can_message', e.target.value)}>
          <option value="everyone" selected=${s.who_can_message === 'everyone'}>${t('everyone')}</option>
          <option value="contacts" selected=${s.who_can_message === 'contacts'}>${t('contacts_only')}</option>
        </select></label>
      <label>${t('who_sees_presence')}
        <select name="presence" value=${s.presence} onChange=${(e) => change('presence', e.target.value)}>
          <option value="contacts" selected=${s.presence === 'contacts'}>${t('contacts_only')}</option>
          <option value="nobody" selected=${s.presence === 'nobody'}>${t('nobody')}</option>
        </select></label>
      <label class="check"><input type="checkbox" name="read_receipts" checked=${s.read_receipts}
        onChange=${(e) => change('read_receipts', e.target.checked)} /> ${t('send_read_receipts')}</label>
    </form>`;
}

function systemText(i, chat, sender, ev) {
  if (!ev) return '';
  const { t } = i;
  const who = (u) => (u === chat.me ? t('you') : u);
  switch (ev.type) {
    case 'group_created':
      return t('sys_group_created', { by: who(sender), name: ev.name });
    case 'members_added':
      return t('sys_members_added', { by: who(sender), users: i.join((ev.users || []).map(who)) });
    case 'member_removed':
      return ev.user === sender ? t('sys_member_left', { user: who(ev.user) }) : t('sys_member_removed', { by: who(sender), user: who(ev.user) });
    case 'group_updated':
      return t('sys_group_updated', { by: who(sender) });
    case 'role_changed':
      return t('sys_role_changed', { by: who(sender), user: who(ev.user), role: t('role_' + ev.role) });
    default:
      return '';
  }
}

function Ticks({ i, chat, c, item }) {
  const read = c.allReadSeq >= item.seq;
  return html`<span class=${'ticks' + (read ? ' read' : '')} title=${read ? i.t('delivered_read') : i.t('sent')}
                    aria-label=${read ? i.t('delivered_read') : i.t('sent')}>${read ? '✓✓' : '✓'}</span>`;
}

function Message({ i, chat, c, item, onEdit }) {
  const { t } = i;
  const mine = item.sender === chat.me;
  const ms = Date.parse(item.timestamp);
  const canChange = mine && !item.recalled && chat.conn.ready;
  return html`
    <li class=${'msg' + (mine ? ' mine' : '')} data-seq=${item.seq} data-client-id=${item.client_id || ''}>
      ${c.kind === 'g' && !mine && html`<span class="sender">${item.sender}</span>`}
      <div class="bubble">
        ${item.recalled ? html`<em class="recalled">${t('recalled')}</em>` : html`<span class="content">${item.content}</span>`}
        <span class="meta">
          ${item.edited_at && !item.recalled && html`<span class="edited">${t('edited')}</span>`}
          <time datetime=${item.timestamp} data-ts=${ms}>${i.time(ms)}</time>
          ${mine && item.kind === 'text' && !item.recalled && html`<${Ticks} i=${i} chat=${chat} c=${c} item=${item} />`}
        </span>
      </div>
      ${canChange &&
      html`<span class="msg-actions">
        <button class="small" onClick=${() => onEdit(item)} aria-label=${t('edit')}>${t('edit')}</button>
        <button class="small" onClick=${() => chat.recall(c, item.seq)} aria-label=${t('recall')}>${t('recall')}</button>
      </span>`}
    </li>`;
}

function Pending({ i, chat, e }) {
  const { t } = i;
  const ms = Date.parse(e.at);
  return html`
    <li class="msg mine pending" data-client-id=${e.cid} data-state=${e.state}>
      <div class="bubble">
        <span class="content">${e.frame.content}</span>
        <span class="meta">
          <time datetime=${e.at} data-ts=${ms}>${i.time(ms)}</time>
          ${e.state === 'acked' ? html`<span class="ticks" aria-label=${t('sent')}>✓</span>`
                                : e.state === 'pending' ? html`<span class="ticks clock" aria-label=${t('sending')}>🕓</span>` : ''}
        </span>
      </div>
      ${e.state === 'failed' && html`<p class="error" role="alert">${t('send_failed', { reason: describeError(t, new ApiError(400, e.error.code, e.error.message)) })}
        <button class="small" onClick=${() => chat.retry(e.cid)}>${t('retry')}</button>
        <button class="small secondary" onClick=${() => chat.discard(e.cid)}>${t('dismiss')}</button></p>`}
    </li>`;
}

function GroupPanel({ i, chat, c, say }) {
  const { t } = i;
  const [user, setUser] = useState('');
  if (!c.group) return null;
  const { info, members } = c.group;
  const admin = info.role === 'owner' || info.role === 'admin';
  const act = (f) => async (ev) => {
    if (ev && ev.preventDefault) ev.preventDefault();
    try {
      await f();
    } catch (e) {
      say({ error: e });
    }
  };
  return html`
    <aside class="group-panel" aria-label=${t('members')}>
      <h3>${t('members')} <small>${t('members_count', { n: info.member_count })}</small></h3>
      <ul>
        ${members.map((m) => html`
          <li key=${m.user} class="member" data-user=${m.user}>
            <span>${m.user}</span> <small>${t('role_' + m.role)}</small>
            ${admin && m.user !== chat.me && m.role !== 'owner' &&
            html`<button class="small secondary" onClick=${act(() => chat.removeMember(c, m.user))}>${t('remove')}</button>`}
          </li>`)}
      </ul>
      ${admin && html`
        <form class="inline" onSubmit=${act(async () => { await chat.addMembers(c, [user.trim().toLowerCase()]); setUser(''); })}>
          <label class="sr" for="add-member">${t('add_member')}</label>
          <input id="add-member" name="add_member" placeholder=${t('add_member')} value=${user} onInput=${(e) => setUser(e.target.value)} />
          <button type="submit">${t('add')}</button>
        </form>`}
      ${info.role !== 'owner' && html`<button class="secondary" onClick=${act(() => chat.removeMember(c, chat.me))}>${t('leave_group')}</button>`}
    </aside>`;
}

function Conversation({ i, chat, c, onBack, say }) {
  const { t } = i;
  const [text, setText] = useState('');
  const [editing, setEditing] = useState(null);
  const [showMembers, setShowMembers] = useState(false);
  const listRef = useRef(null);
  const stick = useRef(true);
  const before = useRef(null);

  const items = [...c.items.values()].filter((m) => m.kind === 'text' || m.kind === 'system').sort((a, b) => a.seq - b.seq);
  const pending = chat.pendingFor(c.conv);

  // Keep the view at the bottom while the user is there; keep it still when older items
  // are added above.
  useLayoutEffect(() => {
    const el = listRef.current;
    if (!el) return;
    if (before.current !== null) {
      el.scrollTop += el.scrollHeight - before.current;
      before.current = null;
    } else if (stick.current) {
      el.scrollTop = el.scrollHeight;
    }
  });
  useEffect(() => {
    stick.current = true;
    setEditing(null);
    setText('');
    setShowMembers(false);
  }, [c.conv]);

  const onScroll = (ev) => {
    const el = ev.target;
    stick.current = el.scrollHeight - el.scrollTop - el.clientHeight < 40;
    if (el.scrollTop < 60 && c.hasOlder && !c.loadingOlder) {
      before.current = el.scrollHeight;
      chat.loadOlder(c);
    }
  };

  const submit = () => {
    const body = text.trim();
    if (!body) return;
    if (editing) chat.edit(c, editing.seq, body);
    else chat.sendText(c, body);
    stick.current = true;
    setText('');
    setEditing(null);
  };
  const onKey = (ev) => {
    if (ev.key === 'Enter' && !ev.shiftKey && !ev.isComposing) {
      ev.preventDefault();
      submit();
    } else if (ev.key === 'Escape' && editing) {
      setEditing(null);
      setText('');
    }
  };

  const peer = chat.peer(c);
  const p = peer && chat.presence.get(peer);
  const typers = chat.typingIn(c.conv).filter((u) => u !== chat.me);
  let lastDay = null;
  const rows = [];
  for (const m of items) {
    const ms = Date.parse(m.timestamp);
    const day = i.dayKey(ms);
    if (day !== lastDay) {
      rows.push(html`<li class="day" key=${'day-' + day}><span>${i.dayLabel(ms)}</span></li>`);
      lastDay = day;
    }
    if (m.kind === 'system') rows.push(html`<li class="system" key=${m.seq} data-seq=${m.seq}>${systemText(i, chat, m.sender, m.event)}</li>`);
    else rows.push(html`<${Message} key=${m.seq} i=${i} chat=${chat} c=${c} item=${m} onEdit=${(it) => { setEditing(it); setText(it.content); }} />`);
  }
  for (const e of pending) rows.push(html`<${Pending} key=${e.cid} i=${i} chat=${chat} e=${e} />`);

  return html`
    <section class="conversation" aria-label=${convTitle(chat, c)} data-conv=${c.conv}>
      <header>
        <button class="back" onClick=${onBack} aria-label=${t('back')}>‹</button>
        <div class="who">
          <h2>${peer && html`<${Dot} status=${p && p.status} />`}${convTitle(chat, c)}</h2>
          <small class="status">${peer ? presenceText(i, p) : c.group ? t('members_count', { n: c.group.info.member_count }) : ''}</small>
        </div>
        ${c.kind === 'g' && html`<button class="secondary" aria-expanded=${showMembers} onClick=${() => setShowMembers(!showMembers)}>${t('members')}</button>`}
      </header>
      <div class="body">
        <ol class="messages" ref=${listRef} onScroll=${onScroll} aria-live="polite">
          ${c.hasOlder && html`<li class="older"><button class="link" onClick=${() => { before.current = listRef.current.scrollHeight; chat.loadOlder(c); }}>
            ${c.loadingOlder ? t('loading') : t('load_older')}</button></li>`}
          ${rows}
        </ol>
        ${showMembers && html`<${GroupPanel} i=${i} chat=${chat} c=${c} say=${say} />`}
      </div>
      <p class="typing" aria-live="polite">${typers.length === 1 ? t('typing_one', { user: typers[0] }) : typers.length > 1 ? t('typing_many', { users: i.join(typers) }) : ''}</p>
      ${c.left ? html`<p class="left">${t('left_group')}</p>` : html`
      <div class="composer">
        ${editing && html`<p class="editing">${t('editing')} <button class="small secondary" onClick=${() => { setEditing(null); setText(''); }}>${t('cancel')}</button></p>`}
        <label class="sr" for="composer">${t('message_label')}</label>
        <textarea id="composer" name="message" rows="2" placeholder=${t('type_message')} value=${text}
                  onInput=${(e) => { setText(e.target.value); if (e.target.value) chat.typingInput(c); }}
                  onBlur=${() => chat.stopTyping()} onKeyDown=${onKey}></textarea>
        <button onClick=${submit} aria-label=${editing ? t('save') : t('send')}>${editing ? t('save') : t('send')}</button>
      </div>`}
    </section>`;
}

function Main({ i, api, chat, setLocale, onSignOut }) {
  const { t } = i;
  const [tab, setTab] = useState('chats');
  const say = (n) => {
    chat.notice = n;
    chat.emit();
    // news goes away by itself; an error stays until dismissed
    if (n && !n.error) setTimeout(() => chat.notice === n && say(null), 6000);
  };
  const open = (id) => {
    setTab('chats');
    chat.open(id);
  };
  const c = chat.openId && chat.convs.get(chat.openId);
  const connText = { connecting: t('conn_connecting'), online: t('conn_online'), longpoll: t('conn_longpoll'), offline: t('conn_offline') }[chat.connState];
  const n = chat.notice;
  return html`
    <div class=${'app' + (c ? ' has-open' : '')}>
      <nav class="side">
        <header>
          <h1>${t('app_name')}</h1>
          <span class=${'conn ' + chat.connState} role="status" data-state=${chat.connState}>${connText}</span>
        </header>
        <div class="me"><small>${t('signed_in_as', { user: chat.me })}</small>
          <${LanguagePicker} i=${i} setLocale=${setLocale} />
          <button class="secondary small" onClick=${onSignOut}>${t('sign_out')}</button></div>
        <div class="tabs" role="tablist">
          <button role="tab" aria-selected=${tab === 'chats'} onClick=${() => setTab('chats')}>${t('chats')}</button>
          <button role="tab" aria-selected=${tab === 'contacts'} onClick=${() => setTab('contacts')}>${t('contacts')}
            ${chat.contacts.some((k) => k.state === 'incoming') && html` <span class="badge">${chat.contacts.filter((k) => k.state === 'incoming').length}</span>`}</button>
          <button role="tab" aria-selected=${tab === 'group'} onClick=${() => setTab('group')}>${t('new_group')}</button>
          <button role="tab" aria-selected=${tab === 'settings'} onClick=${() => setTab('settings')}>${t('settings')}</button>
        </div>
        ${tab === 'chats' && html`<${ConvList} i=${i} chat=${chat} />`}
        ${tab === 'contacts' && html`<${Contacts} i=${i} chat=${chat} onOpen=${open} say=${say} />`}
        ${tab === 'group' && html`<${NewGroup} i=${i} chat=${chat} onOpen=${open} say=${say} />`}
        ${tab === 'settings' && html`<${Settings} i=${i} chat=${chat} say=${say} />`}
      </nav>
      <main class="pane">
        ${n && html`<p class=${n.error ? 'notice error' : 'notice'} role=${n.error ? 'alert' : 'status'}>
          ${n.error ? describeError(t, n.error) : n.text}
          <button class="small secondary" onClick=${() => say(null)}>${t('dismiss')}</button></p>`}
        ${c ? html`<${Conversation} i=${i} chat=${chat} c=${c} onBack=${() => chat.close()} say=${say} />`
            : html`<p class="empty">${t('pick_chat')}</p>`}
      </main>
    </div>`;
}

function App() {
  const [, force] = useReducer((x) => x + 1, 0);
  const [profile, setProfile] = useState(null);
  const [chosen, setChosen] = useState(() => localStorage.getItem(LOCALE_KEY));
  const [lost, setLost] = useState(false);
  const apiRef = useRef(null);
  const chatRef = useRef(null);
  if (!apiRef.current) apiRef.current = new Api(() => { setLost(true); stopChat(); force(); });
  const api = apiRef.current;

  const stopChat = () => {
    if (chatRef.current) chatRef.current.stop();
    chatRef.current = null;
  };
  const startChat = () => {
    stopChat();
    chatRef.current = new Chat(api, api.user, force);
    chatRef.current.start();
    api.req('GET', '/v1/users/me').then(setProfile, () => {});
    force();
  };
  useEffect(() => {
    if (api.user) startChat();
    return stopChat;
  }, []);

  const locale = pickLocale(chosen || (profile && profile.locale !== 'en' ? profile.locale : null) || navigator.language);
  const i = makeI18n(locale, pickZone(profile && profile.time_zone));
  useEffect(() => {
    document.documentElement.lang = locale;
    document.title = i.t('app_name');
  }, [locale]);
  const setLocale = (tag) => {
    localStorage.setItem(LOCALE_KEY, tag);
    setChosen(tag);
  };

  if (!api.user || !chatRef.current) {
    return html`
      ${lost && html`<p class="notice error" role="alert">${i.t('err_session')}</p>`}
      <${Auth} i=${i} api=${api} setLocale=${setLocale} onSignedIn=${() => { setLost(false); startChat(); }} />`;
  }
  const signOut = async () => {
    stopChat();
    try {
      await api.logout();
    } catch (e) {
      /* the tokens are forgotten either way */
    }
    setProfile(null);
    force();
  };
  return html`<${Main} i=${i} api=${api} chat=${chatRef.current} setLocale=${setLocale} onSignOut=${signOut} />`;
}

render(html`<${App} />`, document.getElementById('app'));
