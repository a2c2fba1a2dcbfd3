// Light and dark: the system's choice until the person picks one with the toggle, which is
// remembered in localStorage.
import { ref } from 'vue'

const KEY = 'chatgate.theme'
const media = window.matchMedia('(prefers-color-scheme: dark)')

function saved() {
  try {
    const value = localStorage.getItem(KEY)
    return value === 'light' || value === 'dark' ? value : null
  } catch {
    return null
  }
}

export const theme = ref(saved() || (media.matches ? 'dark' : 'light'))

function apply() {
  document.documentElement.dataset.theme = theme.value
}

export function toggleTheme() {
  theme.value = theme.value === 'dark' ? 'light' : 'dark'
  try {
    localStorage.setItem(KEY, theme.value)
  } catch {
    // not persisted in private mode
  }
  apply()
}

export function initTheme() {
  apply()
  media.addEventListener('change', (e) => {
    if (saved()) return
    theme.value = e.matches ? 'dark' : 'light'
    apply()
  })
}
