// Every string the UI shows, in one catalog per language, and the formatting of counts, times
// and days through Intl, in the user's locale and time zone.
//
// A value is a string with {name} placeholders, or, for counted things, an object keyed by the
// CLDR plural category of the count (Intl.PluralRules): English needs "one" and "other",
// Chinese only "other".

const en = {
  app_name: 'Parley',
  language: 'Language',
  // sign in and up
  sign_in: 'Sign in',
  sign_up: 'Create account',
  username: 'Username',
  password: 'Password',
  display_name: 'Display name (optional)',
  have_account: 'Have an account? Sign in',
  need_account: 'New here? Create an account',
  sign_out: 'Sign out',
  signed_in_as: 'Signed in as {user}',
  // connection
  conn_connecting: 'Connecting…',
  conn_online: 'Connected',
  conn_longpoll: 'Connected (long-polling)',
  conn_offline: 'Offline: messages will be sent when the connection is back',
  // navigation
  chats: 'Chats',
  contacts: 'Contacts',
  new_group: 'New group',
  back: 'Back',
  no_chats: 'No conversations yet. Add a contact to start one.',
  pick_chat: 'Pick a conversation, or start one from your contacts.',
  unread: { one: '{n} unread message', other: '{n} unread messages' },
  members_count: { one: '{n} member', other: '{n} members' },
  // messages
  message_label: 'Message',
  type_message: 'Write a message (Enter sends, Shift+Enter for a new line)',
  send: 'Send',
  sending: 'Sending',
  sent: 'Sent',
  delivered_read: 'Read',
  send_failed: 'Not sent: {reason}',
  retry: 'Retry',
  edit: 'Edit',
  recall: 'Recall',
  editing: 'Editing your message',
  cancel: 'Cancel',
  save: 'Save',
  edited: 'edited',
  recalled: 'This message was recalled',
  you: 'You',
  load_older: 'Load older messages',
  loading: 'Loading…',
  typing_one: '{user} is typing…',
  typing_many: '{users} are typing…',
  today: 'Today',
  yesterday: 'Yesterday',
  // presence
  online: 'online',
  offline: 'offline',
  last_seen: 'last seen {when}',
  // contacts
  add_contact: 'Add a contact',
  add: 'Add',
  contact_username: 'Their username',
  requests_in: 'Requests to you',
  requests_out: 'Your requests',
  your_contacts: 'Contacts',
  accept: 'Accept',
  decline: 'Decline',
  cancel_request: 'Cancel request',
  remove: 'Remove',
  block: 'Block',
  unblock: 'Unblock',
  blocked_users: 'Blocked',
  message_action: 'Message',
  requested: 'requested',
  no_contacts: 'No contacts yet.',
  request_sent: 'Request sent to {user}.',
  now_contacts: 'You and {user} are contacts.',
  // groups
  group_name: 'Group name',
  group_members: 'Members (usernames, separated by commas)',
  create: 'Create',
  members: 'Members',
  add_member: 'Add a member',
  leave_group: 'Leave group',
  role_owner: 'owner',
  role_admin: 'admin',
  role_member: 'member',
  left_group: 'You are no longer in this group.',
  // system items
  sys_group_created: '{by} created the group “{name}”',
  sys_members_added: '{by} added {users}',
  sys_member_removed: '{by} removed {user}',
  sys_member_left: '{user} left',
  sys_group_updated: '{by} changed the group',
  sys_role_changed: '{by} made {user} {role}',
  // errors: one per code of the API's error table, and the ones only a client sees
  err_bad_login: 'Wrong username or password.',
  err_taken: 'That username is taken. Pick another one.',
  err_rate_limited: 'Too many attempts. Try again in {s} s.',
  err_rate_limited_now: 'Too many attempts. Try again in a moment.',
  err_invalid: 'That was not accepted: {detail}',
  err_forbidden: 'Not allowed: {detail}',
  err_not_found: 'Not found: {detail}',
  err_conflict: 'Conflict: {detail}',
  err_too_large: 'That is too large.',
  err_unavailable: 'The service is busy. Try again in a moment.',
  err_network: 'Cannot reach the server. Check your connection.',
  err_session: 'Your session ended. Please sign in again.',
  err_generic: 'Something went wrong: {detail}',
  dismiss: 'Dismiss',
  // settings
  settings: 'Settings',
  privacy: 'Privacy',
  who_can_message: 'Who can message me',
  who_sees_presence: 'Who sees when I am online',
  everyone: 'Everyone',
  contacts_only: 'My contacts',
  nobody: 'Nobody',
  send_read_receipts: 'Let others see when I have read their messages',
  settings_saved: 'Saved.',
};

const zhCN = {
  app_name: 'Parley',
  language: '语言',
  sign_in: '登录',
  sign_up: '注册',
  username: '用户名',
  password: '密码',
  display_name: '昵称（可选）',
  have_account: '已有账号？去登录',
  need_account: '第一次来？注册账号',
  sign_out: '退出登录',
  signed_in_as: '当前用户：{user}',
  conn_connecting: '正在连接…',
  conn_online: '已连接',
  conn_longpoll: '已连接（长轮询）',
  conn_offline: '已离线：连接恢复后消息会自动发送',
  chats: '会话',
  contacts: '联系人',
  new_group: '新建群组',
  back: '返回',
  no_chats: '还没有会话。添加联系人后即可开始聊天。',
  pick_chat: '选择一个会话，或从联系人开始聊天。',
  unread: { other: '{n} 条未读消息' },
  members_count: { other: '{n} 位成员' },
  message_label: '消息',
  type_message: '输入消息（Enter 发送，Shift+Enter 换行）',
  send: '发送',
  sending: '发送中',
  sent: '已发送',
  delivered_read: '已读',
  send_failed: '未发送：{reason}',
  retry: '重试',
  edit: '编辑',
  recall: '撤回',
  editing: '正在编辑你的消息',
  cancel: '取消',
  save: '保存',
  edited: '已编辑',
  recalled: '此消息已撤回',
  you: '我',
  load_older: '加载更早的消息',
  loading: '加载中…',
  typing_one: '{user} 正在输入…',
  typing_many: '{users} 正在输入…',
  today: '今天',
  yesterday: '昨天',
  online: '在线',
  offline: '离线',
  last_seen: '最后在线 {when}',
  add_contact: '添加联系人',
  add: '添加',
  contact_username: '对方的用户名',
  requests_in: '收到的请求',
  requests_out: '发出的请求',
  your_contacts: '联系人',
  accept: '接受',
  decline: '拒绝',
  cancel_request: '取消请求',
  remove: '删除',
  block: '屏蔽',
  unblock: '取消屏蔽',
  blocked_users: '已屏蔽',
  message_action: '发消息',
  requested: '已请求',
  no_contacts: '还没有联系人。',
  request_sent: '已向 {user} 发送请求。',
  now_contacts: '你和 {user} 已成为联系人。',
  group_name: '群组名称',
  group_members: '成员（用户名，用逗号分隔）',
  create: '创建',
  members: '成员',
  add_member: '添加成员',
  leave_group: '退出群组',
  role_owner: '群主',
  role_admin: '管理员',
  role_member: '成员',
  left_group: '你已不在此群组中。',
  sys_group_created: '{by} 创建了群组“{name}”',
  sys_members_added: '{by} 添加了 {users}',
  sys_member_removed: '{by} 移除了 {user}',
  sys_member_left: '{user} 退出了群组',
  sys_group_updated: '{by} 修改了群组',
  sys_role_changed: '{by} 将 {user} 设为{role}',
  err_bad_login: '用户名或密码错误。',
  err_taken: '该用户名已被占用，请换一个。',
  err_rate_limited: '尝试次数过多，请在 {s} 秒后重试。',
  err_rate_limited_now: '尝试次数过多，请稍后重试。',
  err_invalid: '请求未被接受：{detail}',
  err_forbidden: '不允许：{detail}',
  err_not_found: '未找到：{detail}',
  err_conflict: '冲突：{detail}',
  err_too_large: '内容过大。',
  err_unavailable: '服务繁忙，请稍后重试。',
  err_network: '无法连接服务器，请检查网络。',
  err_session: '会话已结束，请重新登录。',
  err_generic: '出错了：{detail}',
  dismiss: '关闭',
  settings: '设置',
  privacy: '隐私',
  who_can_message: '谁可以给我发消息',
  who_sees_presence: '谁能看到我在线',
  everyone: '所有人',
  contacts_only: '我的联系人',
  nobody: '没有人',
  send_read_receipts: '让对方看到我已读了他们的消息',
  settings_saved: '已保存。',
};

export const CATALOGS = { en, 'zh-CN': zhCN };
export const LANGUAGES = [
  ['en', 'English'],
  ['zh-CN', '简体中文'],
];

// The catalog for a BCP 47 tag: any Chinese tag gets zh-CN, anything else English.
export function pickLocale(tag) {
  if (tag && CATALOGS[tag]) return tag;
  return tag && /^zh\b/i.test(tag) ? 'zh-CN' : 'en';
}

function fill(s, params) {
  return s.replace(/\{(\w+)\}/g, (m, k) => (params && k in params ? String(params[k]) : m));
}

// The time zone to show times in: the profile's when it is a zone this browser knows,
// otherwise the browser's own.
export function pickZone(profileZone) {
  if (profileZone && profileZone !== 'UTC') {
    try {
      new Intl.DateTimeFormat('en', { timeZone: profileZone });
      return profileZone;
    } catch (e) {
      /* unknown zone: fall through */
    }
  }
  return Intl.DateTimeFormat().resolvedOptions().timeZone || 'UTC';
}

// A translator bound to one locale and time zone.
export function makeI18n(locale, zone) {
  const cat = CATALOGS[locale] || en;
  const plural = new Intl.PluralRules(locale);
  const timeFmt = new Intl.DateTimeFormat(locale, { hour: '2-digit', minute: '2-digit', timeZone: zone });
  const dateFmt = new Intl.DateTimeFormat(locale, { year: 'numeric', month: 'long', day: 'numeric', weekday: 'short', timeZone: zone });
  const shortDateFmt = new Intl.DateTimeFormat(locale, { month: 'short', day: 'numeric', timeZone: zone });
  const keyFmt = new Intl.DateTimeFormat('en-CA', { year: 'numeric', month: '2-digit', day: '2-digit', timeZone: zone });
  const list = Intl.ListFormat ? new Intl.ListFormat(locale, { type: 'conjunction' }) : null;

  const t = (key, params) => {
    let v = cat[key] ?? en[key] ?? key;
    if (typeof v === 'object') {
      const n = params && typeof params.n === 'number' ? params.n : 0;
      v = v[plural.select(n)] ?? v.other;
    }
    return fill(v, params);
  };
  // The calendar day of an instant in the user's zone, as YYYY-MM-DD.
  const dayKey = (ms) => keyFmt.format(new Date(ms));
  const prevDayKey = (key) => {
    const [y, m, d] = key.split('-').map(Number);
    return new Date(Date.UTC(y, m - 1, d - 1)).toISOString().slice(0, 10);
  };
  // "Today", "Yesterday" or the date, for a day separator, computed in the user's zone.
  const dayLabel = (ms, now = Date.now()) => {
    const k = dayKey(ms);
    const today = dayKey(now);
    if (k === today) return t('today');
    if (k === prevDayKey(today)) return t('yesterday');
    return dateFmt.format(new Date(ms));
  };
  const time = (ms) => timeFmt.format(new Date(ms));
  // A short time for lists: the hour today, the day otherwise.
  const when = (ms, now = Date.now()) => {
    const k = dayKey(ms);
    const today = dayKey(now);
    if (k === today) return time(ms);
    if (k === prevDayKey(today)) return t('yesterday');
    return shortDateFmt.format(new Date(ms));
  };
  const join = (items) => (list ? list.format(items) : items.join(', '));
  return { locale, zone, t, time, when, dayKey, dayLabel, join };
}
